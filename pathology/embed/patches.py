"""A bag's patches in batches, for a DataLoader: from ``/patches``, or re-read from the slide.

Both datasets yield ``(start, uint8 tensor (B, S, S, 3))`` so features are written by
position whatever order the loader's workers deliver them in.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from ..bag import BagError, read_attrs
from ..errors import storage_errors
from ..fingerprint import fingerprint, slide_changed
from ..slide import open_slide
from ..stain import restore_normalizer
from ..tiling.grid import Grid
from ..tiling.reader import PatchReader


class StoredPatches(Dataset):
    """Batch ``k`` of the bag's stored patches; each loader worker opens its own file handle."""

    def __init__(self, bag: Path, batch_size: int) -> None:
        self.bag, self.batch_size = Path(bag), batch_size
        with h5py.File(self.bag, "r") as f:
            self.count = len(f["patches"])
        self._file: h5py.File | None = None

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __getitem__(self, k: int) -> tuple[int, torch.Tensor]:
        if self._file is None:
            self._file = h5py.File(self.bag, "r")
        lo = k * self.batch_size
        return lo, torch.from_numpy(self._file["patches"][lo:lo + self.batch_size])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}  # workers open their own handle


class SlidePatches(IterableDataset):
    """A coords-only bag's patches, re-read from its slide with the tiler's reader and
    normalized with the stain fit recorded in the bag, so they equal what the tiler
    would have stored. Sequential (the reader decodes each slide tile once, in order)."""

    def __init__(self, bag: Path, batch_size: int, slide_path: Path | None = None, threads: int = 2,
                 verify: bool = False) -> None:
        self.bag, self.batch_size, self.threads = Path(bag), batch_size, threads
        attrs = read_attrs(self.bag)
        self.attrs = attrs
        self.slide_path = Path(slide_path or attrs["slide_path"])
        if not self.slide_path.is_file():
            raise BagError(f"{self.bag.name}: holds coordinates only and its slide {self.slide_path} "
                                    "is not there; pass --slides DIR with the slide files")
        # The slide may be a copy elsewhere (--slides DIR): its modification time says nothing,
        # its size and content do (pathology.fingerprint).
        with storage_errors(self.slide_path, "read"):
            current = fingerprint(self.slide_path, full=verify)
        changed = slide_changed(attrs.get("slide_fingerprint"), self.slide_path, current, copy=True)
        if changed:
            raise BagError(f"{self.bag.name}: slide {self.slide_path} is not the file this bag was tiled from "
                           f"({changed}); re-tile it")
        with h5py.File(self.bag, "r") as f:
            coords = f["coords"]
            size0 = np.broadcast_to(np.asarray(coords.attrs["patch_size_level0"], np.float64), (2,))
            tiling = attrs["tiling"]
            self.grid = Grid(coords[:], f["tissue_fraction"][:], (float(size0[0]), float(size0[1])),
                             tuple(tiling["stride_level0"]), int(attrs["read_level"]), int(tiling["candidates"]))
        self.count = len(self.grid)

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, torch.Tensor]]:
        tiling, params = self.attrs["tiling"], self.attrs["tiling"]["params"]
        normalizer = restore_normalizer(self.attrs["stain"])
        carry, start = None, 0
        with open_slide(self.slide_path, backend=tiling.get("backend", "auto"), mpp=params.get("mpp")) as slide, \
                PatchReader(slide, self.grid, int(self.attrs["patch_size"]), threads=self.threads) as reader:
            for _, batch in reader.read(np.arange(self.count), normalizer.transform):
                carry = batch if carry is None else np.concatenate([carry, batch])
                while len(carry) >= self.batch_size:
                    yield start, torch.from_numpy(np.ascontiguousarray(carry[:self.batch_size]))
                    carry, start = carry[self.batch_size:], start + self.batch_size
        if carry is not None and len(carry):
            yield start, torch.from_numpy(np.ascontiguousarray(carry))


def bag_patches(bag: Path, batch_size: int, slide_path: Path | None = None,
                threads: int = 2, verify: bool = False) -> StoredPatches | SlidePatches:
    """The right dataset for ``bag``: stored patches when it has them, else its slide (checked to
    be the file the bag was tiled from; ``verify``: by the whole file's SHA-256)."""
    with h5py.File(bag, "r") as f:
        stored = "patches" in f
    return StoredPatches(bag, batch_size) if stored else SlidePatches(bag, batch_size, slide_path, threads, verify)
