"""Tile one slide: tissue mask → grid → read → stain-normalize → bag + QC picture.

The bag and its QC picture are written under temporary names and renamed together when both
are complete: a failure (a full disk, a corrupt tile) leaves the previous bag and picture as
they were (docs/reliability.md).
"""

from __future__ import annotations

import json
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
from ..errors import storage_errors
from ..hashing import file_sha256, slide_seed
from ..inputs import SlideInput
from ..localcopy import local_copy
from ..memory import reuse_freed_memory
from ..publish import commit, leftover_target, partial_path
from ..qc import render_qc_image
from ..slide import Slide, SlideError, open_slide
from ..stain import create_normalizer
from ..tissue import TissueParams, detect_tissue
from .grid import Grid, GridSpec, make_grid
from .reader import PatchReader
from .sources import CorruptTileError, open_source

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
               stage_dir: Path | None = None, on_bad_tile: str = "fail", verify_slides: bool = False) -> Outcome:
    """Tile one slide into ``out_dir/<slide_id>.h5`` (and ``out_dir/qc/<slide_id>.png``).

    Skips a complete bag made from the same file (:func:`pathology.fingerprint.slide_changed`;
    ``verify_slides``: by the whole file's SHA-256) with the same options. With ``stage_dir``,
    the slide is read from a local copy made there (and removed after); the bag records the
    original. A corrupt tile fails the slide (``on_bad_tile="fail"``) or drops the patches that
    touch it (``"skip"``: recorded in the bag and the outcome). Raises a
    :class:`pathology.errors.UserError` (a one-line message) on bad input; a bag already at the
    destination is never damaged by a failure. The outcome counts patches.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    bag_path = out_dir / f"{slide_id}.h5"
    params = options.params()
    with storage_errors(path, "read"):
        fp = fingerprint(path, full=verify_slides)
    reason = completed_with(bag_path, path, fp, params, skipped_ok=on_bad_tile == "skip")
    if reason is None:
        return Outcome(slide_id, "skipped", message="bag complete with the same parameters")
    log.debug("%s: tiling (%s)", slide_id, reason)
    reuse_freed_memory()  # each decoded tile and patch reuses freed memory instead of faulting in fresh pages
    try:
        with local_copy(path, stage_dir) as local, \
                open_slide(local, backend=options.backend, mpp=options.mpp) as slide, \
                ThreadPoolExecutor(threads, thread_name_prefix="tile") as pool:
            result = _tile_open_slide(slide, Path(path), slide_id, bag_path, fp, params, options, pool, threads,
                                      on_patches, on_bad_tile)
    except CorruptTileError as exc:
        raise SlideError(exc.path, f"{exc.message}; --on-bad-tile skip drops the patches that touch it") from exc
    grid, source_name, skipped, bad_tiles = result
    seconds = time.perf_counter() - t0
    if not len(grid):
        log.warning("%s: no tissue found; check qc/%s.png (or lower --min-tissue)", slide_id, slide_id)
        return Outcome(slide_id, "done", 0, seconds, f"no tissue found: see qc/{slide_id}.png")
    kept = len(grid) - skipped
    message = f"{kept} patches from level {grid.read_level} via {source_name}"
    if bad_tiles:
        message += f"; skipped {skipped} patches over {len(bad_tiles)} bad tile(s) ({_where(bad_tiles)})"
        log.warning("%s: %s", slide_id, message)
    return Outcome(slide_id, "done", kept, seconds, message,
                   data={"skipped_patches": skipped, "bad_tiles": len(bad_tiles)} if bad_tiles else {})


def _tile_open_slide(slide: Slide, path: Path, slide_id: str, bag_path: Path, fp: str, params: dict,
                     options: TileOptions, pool: ThreadPoolExecutor, threads: int,
                     on_patches: Callable[[int], None] | None, on_bad_tile: str):
    """The work of :func:`tile_slide` once the slide is open: (grid, reader name, patches
    skipped, bad tiles)."""
    mpp = slide.require_mpp()
    bad_tiles: list[dict] = []  # skip: corrupt tiles met so far (thumbnail level and read level)
    thumb, mask, mask_scale = _tissue(slide, options.tissue, pool, threads,
                                      bad_tiles if on_bad_tile == "skip" else None)
    grid = make_grid(slide.dimensions, (mpp.x, mpp.y),
                     [slide.level_downsample_xy(i) for i in range(slide.level_count)],
                     options.grid, mask.mask, mask_scale)
    if not len(grid):
        _refuse_if_smaller_than_a_patch(slide, grid, options)
    qc_path = bag_path.parent / "qc" / f"{slide_id}.png"
    qc_tmp = partial_path(qc_path)  # named on this thread: it is committed from here
    drawing = dict(thumb=thumb, mask=mask, scale=mask_scale, slide_id=slide_id, mpp=mpp.x, options=options)
    # The QC picture and the bag's overview need only the mask and the grid: they are drawn,
    # compressed and written while the patches are read.
    background = [pool.submit(_draw_qc, qc_tmp, grid=grid, **drawing)]
    writer = None
    try:
        with PatchReader(slide, grid, options.grid.patch_size, threads=threads, on_bad_tile=on_bad_tile) as reader:
            normalizer = _fit_stain(reader, grid, slide_id, options)
            writer = BagWriter(bag_path, len(grid), options.grid.patch_size, options.store_patches,
                               options.compression)
            background.append(pool.submit(writer.write_overview, thumb, mask.mask, mask_scale))
            if options.store_patches and len(grid):
                prepare = lambda batch: writer.encode(normalizer.transform(batch))
                for start, encoded in reader.read(np.arange(len(grid)), prepare):
                    keep = [start + j not in reader.bad_patches for j in range(len(encoded))]
                    writer.write_encoded(encoded, keep if reader.bad_patches else None)
                    if on_patches:
                        on_patches(sum(keep))
            kept = np.array([i not in reader.bad_patches for i in range(len(grid))], bool)
            bad_tiles += _unique(reader.bad_patches.values())
            writer.write_geometry(grid.coords[kept], grid.tissue_fraction[kept], grid.patch_size_level0,
                                  skipped=grid.coords[~kept])
            for task in background:
                task.result()
            if not kept.all():  # the picture shows the patches kept
                _draw_qc(qc_tmp, grid=_subset(grid, kept), **drawing)
            tiling = {"params": params, "read_level": grid.read_level, "reader": reader.source_name,
                      "candidates": grid.candidates, "stride_level0": list(grid.stride_level0),
                      "mask_downsample": list(mask_scale), "level_dimensions": slide.level_dimensions,
                      "backend": slide.backend}
            attrs = {"slide_id": slide_id, "slide_path": str(path.resolve()), "slide_fingerprint": fp,
                     "mpp_level0": pair_or_scalar((mpp.x, mpp.y)), "mpp_source": mpp.source,
                     "target_mpp": options.grid.target_mpp, "patch_size": options.grid.patch_size,
                     "read_level": grid.read_level, "tiling": tiling, "stain": normalizer.to_attrs()}
            if bad_tiles:
                attrs["bad_tiles"] = bad_tiles
            writer.commit(attrs)
            commit(qc_tmp, qc_path)  # both complete: the picture follows its bag
            return grid, reader.source_name, int((~kept).sum()), bad_tiles
    except BaseException:
        wait(background)  # nothing may still be writing into the files being dropped
        if writer is not None:
            writer.abort()
        qc_tmp.unlink(missing_ok=True)
        raise


def _refuse_if_smaller_than_a_patch(slide: Slide, grid: Grid, options: TileOptions) -> None:
    """A slide smaller than one patch has no patch to keep whatever its tissue: say so, with
    the sizes, instead of "no tissue found"."""
    (w, h), (pw, ph) = slide.dimensions, grid.patch_size_level0
    if w >= pw and h >= ph:
        return
    mpp = slide.require_mpp()
    size = options.grid.patch_size
    raise SlideError(slide.path, f"the image ({w}x{h} px, {w * mpp.x:.0f}x{h * mpp.y:.0f} µm at {mpp.x:.3g} µm/px) "
                                 f"is smaller than one patch ({size} px at {options.grid.target_mpp:g} µm/px = "
                                 f"{pw:.0f}x{ph:.0f} px of this image); use a smaller --patch-size or "
                                 "--target-mpp, or check its µm/px (--mpp)")


def _unique(records) -> list[dict]:
    """Each bad tile once, in the order met."""
    seen, out = set(), []
    for record in records:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(record)
    return out


def _where(bad_tiles: list[dict], most: int = 3) -> str:
    """The first bad tiles, for a one-line message."""
    names = [f"level {t['level']} column {t['column']} row {t['row']}" if "column" in t
             else f"level {t['level']} box {t.get('box')}" for t in bad_tiles[:most]]
    return "; ".join(names) + (f"; {len(bad_tiles) - most} more" if len(bad_tiles) > most else "")


def _subset(grid: Grid, keep: np.ndarray) -> Grid:
    return Grid(grid.coords[keep], grid.tissue_fraction[keep], grid.patch_size_level0, grid.stride_level0,
                grid.read_level, grid.candidates)


def tile_job(slide: SlideInput, advance: Callable[[int], None], *, out: Path, options: TileOptions,
             threads: int, stage_dir: Path | None = None, on_bad_tile: str = "fail",
             verify_slides: bool = False) -> Outcome:
    """One slide of a tiling batch (:func:`pathology.batch.run_batch`; module level so worker
    processes can run it)."""
    return tile_slide(slide.path, slide.slide_id, out, options, threads=threads, on_patches=advance,
                      stage_dir=stage_dir, on_bad_tile=on_bad_tile, verify_slides=verify_slides)


def _tissue(slide: Slide, params: TissueParams, pool: ThreadPoolExecutor, threads: int,
            bad_tiles: list[dict] | None = None):
    """Thumbnail at the mask resolution and the tissue mask over it, both on all ``threads``.

    The thumbnail's strips are decoded by the fast tile source where there is one (the same
    pixels as the backend's, several times faster than OpenSlide's ``read_region``). With a
    list ``bad_tiles``, a corrupt tile is left white (no tissue there) and recorded in it."""
    mpp = slide.mpp
    downsample = max(1.0, params.mask_mpp / mpp.x)
    source = open_source(slide, slide.best_level_for(downsample))
    try:
        thumb = slide.read_scaled(downsample, pool=pool,
                                  reader=lambda level, x, y, w, h: source.region(x, y, w, h, bad_tiles))
    finally:
        source.close()
    w0, h0 = slide.dimensions
    scale = (w0 / thumb.shape[1], h0 / thumb.shape[0])  # exact level-0 px per thumbnail px
    return thumb, detect_tissue(thumb, mpp.x * scale[0], params, threads=threads), scale


def _fit_stain(reader: PatchReader, grid: Grid, slide_id: str, options: TileOptions):
    """Create the normalizer and fit it on a reproducible sample of this slide's patches (those
    over bad tiles left out, when they are skipped)."""
    normalizer = create_normalizer(options.stain, reference=options.stain_ref, kind=options.kind)
    if options.stain == "none" or not len(grid):
        return normalizer
    n = min(options.stain_fit_patches, len(grid))
    sample = np.sort(np.random.default_rng(slide_seed(slide_id)).choice(len(grid), n, replace=False))
    patches = np.concatenate([batch for _, batch in reader.read(sample)])
    good = np.array([i not in reader.bad_patches for i in sample], bool)
    if not good.any():
        raise SlideError(reader.slide.path, "every patch sampled for the stain fit touches a bad tile")
    normalizer.fit_slide(patches[good], expected_patches=len(grid))
    return normalizer


def _draw_qc(path: Path, *, thumb: np.ndarray, mask, grid: Grid, scale: tuple[float, float], slide_id: str,
             mpp: float, options: TileOptions) -> None:
    """QC picture at ``path`` (a temporary name; the caller publishes it with the bag):
    thumbnail, tissue outline, excluded ink and the kept patch grid."""
    shrink = max(1, int(np.ceil(max(thumb.shape[:2]) / QC_MAX_SIDE)))
    w, h = grid.patch_size_level0
    boxes = np.column_stack([grid.coords[:, 0], grid.coords[:, 1], grid.coords[:, 0] + w, grid.coords[:, 1] + h])
    boxes = boxes / np.array([scale[0], scale[1], scale[0], scale[1]]) / shrink
    title = (f"{slide_id}  ·  {len(grid)} patches of {options.grid.patch_size}px at "
             f"{options.grid.target_mpp:g} µm/px  ·  slide {mpp:.3g} µm/px  ·  stain {options.stain}")
    small = np.asarray(Image.fromarray(thumb).reduce(shrink)) if shrink > 1 else thumb
    h, w = small.shape[:2]
    picture = render_qc_image(small, mask.mask[::shrink, ::shrink][:h, :w], boxes,
                              pen_mask=mask.pen[::shrink, ::shrink][:h, :w], title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    with storage_errors(leftover_target(path)):
        picture.save(path, format="PNG", compress_level=3)
