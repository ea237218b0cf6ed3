"""Tile one slide: tissue mask → grid → read → stain-normalize → bag + QC picture."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..bag import BagWriter, completed_with, fingerprint, pair_or_scalar
from ..batch import Outcome
from ..hashing import file_sha256, slide_seed
from ..inputs import SlideInput
from ..localcopy import local_copy
from ..memory import reuse_freed_memory
from ..qc import write_qc_image
from ..slide import Slide, open_slide
from ..stain import create_normalizer
from ..tissue import TissueParams, detect_tissue
from .grid import Grid, GridSpec, make_grid
from .reader import PatchReader
from .sources import open_source

log = logging.getLogger(__name__)

QC_MAX_SIDE = 2048  # the QC picture is downscaled beyond this


@dataclass(frozen=True)
class TileOptions:
    """Everything that decides a bag's content (stored in it, compared on rerun)."""

    grid: GridSpec = field(default_factory=GridSpec)
    tissue: TissueParams = field(default_factory=TissueParams)
    stain: str = "none"
    stain_ref: str | None = None
    kind: str = "he"                 # "he" or "ihc": IHC gets H-DAB handling (see pathology.stain)
    backend: str = "auto"
    mpp: float | None = None         # level-0 µm/px override
    store_patches: bool = True
    compression: str = "none"        # "gzip": ~20% smaller bags, slower tiling and embedding
    stain_fit_patches: int = 16      # patches sampled per slide to fit the stain model (~1 M pixels)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TileOptions:
        """Options from a plain dict (a bag's or run's stored ``params``, or JSON)."""
        params = dict(params)
        params["grid"] = GridSpec(**params.get("grid", {}))
        params["tissue"] = TissueParams(**params.get("tissue", {}))
        return cls(**params)

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters; the reference is identified by content, not path."""
        out = asdict(self)
        if self.stain_ref:
            out["stain_ref"] = file_sha256(self.stain_ref)
        return out


def tile_slide(path: str | Path, slide_id: str, out_dir: str | Path, options: TileOptions,
               threads: int = 2, on_patches: Callable[[int], None] | None = None,
               stage_dir: Path | None = None) -> Outcome:
    """Tile one slide into ``out_dir/<slide_id>.h5`` (and ``out_dir/qc/<slide_id>.png``).

    Skips a complete bag made from the same file with the same options. With ``stage_dir``,
    the slide is read from a local copy made there (and removed after); the bag records the
    original. Raises a :class:`pathology.errors.UserError` (a one-line message) on bad input; a
    bag already at the destination is never damaged by a failure. The outcome counts patches.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    bag_path = out_dir / f"{slide_id}.h5"
    params = options.params()
    fp = fingerprint(path)
    reason = completed_with(bag_path, fp, params)
    if reason is None:
        return Outcome(slide_id, "skipped", message="bag complete with the same parameters")
    log.debug("%s: tiling (%s)", slide_id, reason)
    reuse_freed_memory()  # each decoded tile and patch reuses freed memory instead of faulting in fresh pages
    with local_copy(path, stage_dir) as local, open_slide(local, backend=options.backend, mpp=options.mpp) as slide, \
            ThreadPoolExecutor(threads, thread_name_prefix="tile") as pool:
        mpp = slide.require_mpp()
        thumb, mask, mask_scale = _tissue(slide, options.tissue, pool, threads)
        grid = make_grid(slide.dimensions, (mpp.x, mpp.y),
                         [slide.level_downsample_xy(i) for i in range(slide.level_count)],
                         options.grid, mask.mask, mask_scale)
        # The QC picture and the bag's overview need only the mask and the grid: they are
        # drawn, compressed and written while the patches are read.
        background = [pool.submit(_write_qc, out_dir / "qc" / f"{slide_id}.png", thumb, mask, grid, mask_scale,
                                  slide_id, mpp.x, options)]
        with PatchReader(slide, grid, options.grid.patch_size, threads=threads) as reader:
            normalizer = _fit_stain(reader, grid, slide_id, options)
            writer = BagWriter(bag_path, len(grid), options.grid.patch_size, options.store_patches,
                               options.compression)
            try:
                writer.write_geometry(grid.coords, grid.tissue_fraction, grid.patch_size_level0)
                background.append(pool.submit(writer.write_overview, thumb, mask.mask, mask_scale))
                if options.store_patches and len(grid):
                    prepare = lambda batch: writer.encode(normalizer.transform(batch))
                    for start, encoded in reader.read(np.arange(len(grid)), prepare):
                        writer.write_encoded(start, encoded)
                        if on_patches:
                            on_patches(len(encoded))
                background[-1].result()
                tiling = {"params": params, "read_level": grid.read_level, "reader": reader.source_name,
                          "candidates": grid.candidates, "stride_level0": list(grid.stride_level0),
                          "mask_downsample": list(mask_scale), "level_dimensions": slide.level_dimensions,
                          "backend": slide.backend}
                writer.commit({
                    "slide_id": slide_id, "slide_path": str(Path(path).resolve()), "slide_fingerprint": fp,
                    "mpp_level0": pair_or_scalar((mpp.x, mpp.y)), "mpp_source": mpp.source,
                    "target_mpp": options.grid.target_mpp, "patch_size": options.grid.patch_size,
                    "read_level": grid.read_level, "tiling": tiling, "stain": normalizer.to_attrs(),
                })
            except BaseException:
                wait(background)  # nothing may still be writing into the file being dropped
                writer.abort()
                raise
        background[0].result()
    if not len(grid):
        log.warning("%s: no tissue found; check qc/%s.png (or lower --min-tissue)", slide_id, slide_id)
        return Outcome(slide_id, "done", 0, time.perf_counter() - t0, f"no tissue found: see qc/{slide_id}.png")
    return Outcome(slide_id, "done", len(grid), time.perf_counter() - t0,
                      f"{len(grid)} patches from level {grid.read_level} via {reader.source_name}")


def tile_job(slide: SlideInput, advance: Callable[[int], None], *, out: Path, options: TileOptions,
             threads: int, stage_dir: Path | None = None) -> Outcome:
    """One slide of a tiling batch (:func:`pathology.batch.run_batch`; module level so worker
    processes can run it)."""
    return tile_slide(slide.path, slide.slide_id, out, options, threads=threads, on_patches=advance,
                      stage_dir=stage_dir)


def _tissue(slide: Slide, params: TissueParams, pool: ThreadPoolExecutor, threads: int):
    """Thumbnail at the mask resolution and the tissue mask over it, both on all ``threads``.

    The thumbnail's strips are decoded by the fast tile source where there is one (the same
    pixels as the backend's, several times faster than OpenSlide's ``read_region``)."""
    mpp = slide.mpp
    downsample = max(1.0, params.mask_mpp / mpp.x)
    source = open_source(slide, slide.best_level_for(downsample))
    try:
        thumb = slide.read_scaled(downsample, pool=pool, reader=lambda level, x, y, w, h: source.region(x, y, w, h))
    finally:
        source.close()
    w0, h0 = slide.dimensions
    scale = (w0 / thumb.shape[1], h0 / thumb.shape[0])  # exact level-0 px per thumbnail px
    return thumb, detect_tissue(thumb, mpp.x * scale[0], params, threads=threads), scale


def _fit_stain(reader: PatchReader, grid: Grid, slide_id: str, options: TileOptions):
    """Create the normalizer and fit it on a reproducible sample of this slide's patches."""
    normalizer = create_normalizer(options.stain, reference=options.stain_ref, kind=options.kind)
    if options.stain == "none" or not len(grid):
        return normalizer
    n = min(options.stain_fit_patches, len(grid))
    sample = np.sort(np.random.default_rng(slide_seed(slide_id)).choice(len(grid), n, replace=False))
    normalizer.fit_slide(np.concatenate([batch for _, batch in reader.read(sample)]), expected_patches=len(grid))
    return normalizer


def _write_qc(path: Path, thumb: np.ndarray, mask, grid: Grid, scale: tuple[float, float], slide_id: str,
              mpp: float, options: TileOptions) -> None:
    """QC picture: thumbnail, tissue outline, excluded ink and the kept patch grid."""
    shrink = max(1, int(np.ceil(max(thumb.shape[:2]) / QC_MAX_SIDE)))
    w, h = grid.patch_size_level0
    boxes = np.column_stack([grid.coords[:, 0], grid.coords[:, 1], grid.coords[:, 0] + w, grid.coords[:, 1] + h])
    boxes = boxes / np.array([scale[0], scale[1], scale[0], scale[1]]) / shrink
    title = (f"{slide_id}  ·  {len(grid)} patches of {options.grid.patch_size}px at "
             f"{options.grid.target_mpp:g} µm/px  ·  slide {mpp:.3g} µm/px  ·  stain {options.stain}")
    small = np.asarray(Image.fromarray(thumb).reduce(shrink)) if shrink > 1 else thumb
    h, w = small.shape[:2]
    write_qc_image(path, small, mask.mask[::shrink, ::shrink][:h, :w], boxes,
                   pen_mask=mask.pen[::shrink, ::shrink][:h, :w], title=title)
