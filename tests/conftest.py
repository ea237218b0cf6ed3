"""Shared fixtures: paths to the real test files and small synthetic slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data() -> Path:
    return DATA


def write_pyramid_tiff(path: Path, image: np.ndarray, downsamples=(1, 4, 16), mpp: float | None = 0.25,
                       tile: int = 256, compression: str = "jpeg", aperio: bool = True) -> Path:
    """A real pyramidal TIFF (Aperio SVS style when ``aperio``) of ``image``, with
    exact reduced levels (block means), as scanners write them."""
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, ds in enumerate(downsamples):
            lh, lw = h // ds, w // ds
            level = image[:lh * ds, :lw * ds].reshape(lh, ds, lw, ds, 3).mean(axis=(1, 3)).astype(np.uint8) \
                if ds > 1 else image
            if aperio:
                desc = (f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=90"
                        + (f"|AppMag = 40|MPP = {mpp}" if mpp and i == 0 else "") + ("" if i == 0 else f" -> {lw}x{lh}"))
            else:
                desc = None
            kwargs = {}
            if not aperio and mpp and i == 0:
                kwargs = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
            tif.write(level, tile=(tile, tile), compression=compression, photometric="rgb",
                      description=desc, subfiletype=0 if aperio or i == 0 else 1, metadata=None, **kwargs)
            if aperio and i == 0:  # Aperio's second page is a stripped thumbnail
                tif.write(image[::32, ::32].copy(), photometric="rgb", compression="jpeg",
                          description=f"Aperio Image Library v12.0.0\r\n{w}x{h} -> thumbnail", metadata=None)
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models and bags: one torch thread is faster, and immune to other processes on a
    shared CPU (used by the MIL test modules through ``pytestmark``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
