"""Score one IHC slide: tissue mask → working tiles → cells → scores, maps, QC picture, JSON.

The slide is read tile by tile at ``working_mpp`` (nuclei are 6-10 µm, so 0.5 µm/px
resolves them), each tile with a margin of context, through the tiler's patch reader:
a whole slide never sits in memory. Per-tile class counts are kept for the maps; the
per-slide JSON is written last, so a slide whose JSON exists with the same parameters
and the same file is complete and a rerun skips it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .. import __version__
from ..bag import fingerprint
from ..batch import Outcome
from ..errors import InputError
from ..hashing import slide_seed
from ..heatmap.files import write_json
from ..inputs import SlideInput
from ..slide import Slide, open_slide
from ..tiling.grid import Grid, choose_read_level, tissue_fractions
from ..tiling.reader import PatchReader
from ..tissue import TissueParams, detect_tissue
from .analysis import Settings, analyze_tile
from .deconvolution import BASES, StainBasis
from .maps import TileTable, write_maps
from .markers import MARKERS, IntensityThresholds
from .membrane import MembraneParams
from .nuclei import NucleusParams
from .report.qc import write_qc_picture
from .results import slide_record

log = logging.getLogger(__name__)

SCHEMA = "pathology-ihc/1"
FIT_TILES = 8          # tiles sampled to fit a per-slide stain matrix
MAP_SIDE = 2048        # longer side of the map background picture, in pixels


@dataclass(frozen=True)
class IHCOptions:
    """Everything that decides a slide's result (stored in its JSON, compared on rerun)."""

    marker: str = "er"
    thresholds: IntensityThresholds | None = None      # None: the marker's defaults
    nuclei: NucleusParams = field(default_factory=NucleusParams)
    membrane: MembraneParams = field(default_factory=MembraneParams)
    stain_matrix: str = "standard"
    working_mpp: float = 0.5
    tile_size: int = 512
    margin: int = 40
    tissue: TissueParams = field(default_factory=TissueParams)
    backend: str = "auto"
    mpp: float | None = None

    def __post_init__(self) -> None:
        if self.marker not in MARKERS:
            raise InputError(f"unknown marker {self.marker!r}; choose {', '.join(MARKERS)}")
        if self.stain_matrix not in BASES:
            raise InputError(f"unknown stain matrix {self.stain_matrix!r}; choose {', '.join(BASES)}")
        if not 0.1 <= self.working_mpp <= 2.0:
            raise InputError(f"working µm/px must be within 0.1-2 (nuclei must be resolved), got {self.working_mpp}")
        if self.tile_size < 64 or self.margin < 8:
            raise InputError(f"tile size must be >= 64 and margin >= 8 px, got {self.tile_size}, {self.margin}")
        if self.thresholds is None:
            object.__setattr__(self, "thresholds", MARKERS[self.marker].thresholds)

    def params(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


def result_path(out_dir: Path, slide_id: str) -> Path:
    return out_dir / f"{slide_id}.json"


def is_complete(path: Path, slide_fingerprint: str, params: dict) -> bool:
    """Whether the JSON at ``path`` holds this slide's result with these parameters."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return done.get("schema") == SCHEMA and done.get("slide_fingerprint") == slide_fingerprint \
        and done.get("params") == params


def score_slide(path: str | Path, slide_id: str, out_dir: str | Path, options: IHCOptions, threads: int = 2,
                on_tiles=None) -> Outcome:
    """Score one slide into ``out_dir`` (``<slide_id>.json``, ``qc/``, ``maps/``, ``tiles/``).

    Raises :class:`pathology.slide.SlideError` or ValueError (one line) on bad input.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    params, fp = options.params(), fingerprint(path)
    json_path = result_path(out_dir, slide_id)
    if is_complete(json_path, fp, params):
        return Outcome(slide_id, "skipped", message="result complete with the same parameters")
    marker = MARKERS[options.marker]
    with open_slide(path, backend=options.backend, mpp=options.mpp) as slide:
        mpp = slide.require_mpp()
        mask, mask_scale = tissue_mask(slide, options.tissue)
        grid = tile_grid(slide, options, mask, mask_scale)
        size = options.tile_size + 2 * options.margin
        with PatchReader(slide, grid, size, threads=threads, chunk=max(2, threads)) as reader:
            basis = _basis(reader, grid, slide_id, options.stain_matrix)
            settings = Settings(marker, options.thresholds, options.nuclei, options.membrane, basis,
                                options.working_mpp, options.margin)
            analyze = lambda i, rgb, keep=False: analyze_tile(
                rgb, tile_tissue(grid, i, size, mask, mask_scale), settings, keep_labels=keep)
            table = TileTable.empty(len(grid))
            for start, batch in reader.read(np.arange(len(grid))):  # decoded ahead on the reader's threads
                for i, rgb in enumerate(batch, start):
                    table.record(i, analyze(i, rgb))
                if on_tiles:
                    on_tiles(len(batch))
            best = table.showcase()
            qc_rgb = qc_cells = None
            if best is not None:  # the showcase tile again, keeping its label images for the picture
                qc_rgb = next(iter(reader.read(np.array([best]))))[1][0]
                qc_cells = analyze(best, qc_rgb, True)
        picture = slide.read_scaled(max(1.0, max(slide.dimensions) / MAP_SIDE))
        counts = table.totals()
        qc_path = out_dir / "qc" / f"{slide_id}.png"
        write_qc_picture(qc_path, qc_rgb, qc_cells, options.margin, marker, counts, slide_id, options.working_mpp)
        maps = write_maps(out_dir, slide_id, table, grid, picture, slide.dimensions, mask, marker,
                          options.thresholds, options.tile_size * options.working_mpp)
        record = slide_record(
            schema=SCHEMA, slide_id=slide_id, slide_path=str(Path(path).resolve()), slide_fingerprint=fp,
            params=params, marker=marker, counts=counts, table=table, basis=basis,
            mpp=mpp.x, mpp_source=mpp.source,
            outputs={"qc": str(qc_path.relative_to(out_dir)), **{k: str(v.relative_to(out_dir))
                                                               for k, v in maps.items()}},
            software_version=__version__, created=datetime.now(UTC).isoformat(timespec="seconds"))
    write_json(json_path, record)
    for warning in record["warnings"]:
        log.warning("%s: %s", slide_id, warning)
    n = int(counts.sum())
    if not n:
        log.warning("%s: no cells found; check qc/%s.png and the tissue mask (--mask-mpp)", slide_id, slide_id)
    return Outcome(slide_id, "done", len(grid), time.perf_counter() - t0,
                   f"{n} {'cells' if marker.compartment == 'membrane' else 'nuclei'}: {record['call']['result']}")



def ihc_job(slide: SlideInput, advance, *, out: Path, options: IHCOptions, threads: int) -> Outcome:
    """One slide of an IHC batch (:func:`pathology.batch.run_batch`; module level so worker
    processes can run it)."""
    return score_slide(slide.path, slide.slide_id, out, options, threads=threads, on_tiles=advance)


def tissue_mask(slide: Slide, params: TissueParams) -> tuple[np.ndarray, tuple[float, float]]:
    """Tissue mask on a thumbnail at the mask resolution, grown by the detector's blur
    (``blur_um``), and level-0 px per mask px.

    The detector thresholds a blurred picture, so its edge runs up to a blur width inside
    the tissue; growing it keeps the outermost row of cells. Glass holds no nuclei, so the
    wider mask adds none.
    """
    thumb = slide.read_scaled(max(1.0, params.mask_mpp / slide.mpp.x))
    w0, h0 = slide.dimensions
    scale = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    mask = detect_tissue(thumb, slide.mpp.x * scale[0], params).mask
    radius = math.ceil(params.blur_um / (slide.mpp.x * scale[0]))
    disk = np.hypot(*np.mgrid[-radius:radius + 1, -radius:radius + 1]) <= radius
    return ndimage.binary_dilation(mask, disk) if mask.any() else mask, scale


def tile_grid(slide: Slide, options: IHCOptions, mask: np.ndarray, mask_scale: tuple[float, float]) -> Grid:
    """Core tiles covering the slide at the working resolution, kept where they hold tissue;
    each is read with ``margin`` px of context (its coords are the context's corner)."""
    mpp = slide.require_mpp()
    fx, fy = options.working_mpp / mpp.x, options.working_mpp / mpp.y
    core = (options.tile_size * fx, options.tile_size * fy)
    w0, h0 = slide.dimensions
    xs = np.arange(math.ceil(w0 / core[0])) * core[0]
    ys = np.arange(math.ceil(h0 / core[1])) * core[1]
    gy, gx = (a.ravel() for a in np.meshgrid(ys, xs, indexing="ij"))
    frac = tissue_fractions(mask, mask_scale, gx, gy, core)
    keep = frac > 0
    coords = np.stack([np.round(gx[keep] - options.margin * fx), np.round(gy[keep] - options.margin * fy)], 1)
    size = options.tile_size + 2 * options.margin
    levels = [slide.level_downsample_xy(i) for i in range(slide.level_count)]
    return Grid(coords=coords.astype(np.int64).reshape(-1, 2), tissue_fraction=frac[keep],
                patch_size_level0=(size * fx, size * fy), stride_level0=core,
                read_level=choose_read_level(levels, (fx, fy)), candidates=len(gx))


def tile_tissue(grid: Grid, index: int, size: int, mask: np.ndarray, mask_scale: tuple[float, float]) -> np.ndarray:
    """The tissue mask under tile ``index`` (``size``² working px), nearest mask pixel each."""
    x0, y0 = grid.coords[index]
    step = (grid.patch_size_level0[0] / size, grid.patch_size_level0[1] / size)
    cols = np.floor((x0 + (np.arange(size) + 0.5) * step[0]) / mask_scale[0]).astype(np.int64)
    rows = np.floor((y0 + (np.arange(size) + 0.5) * step[1]) / mask_scale[1]).astype(np.int64)
    inside = ((rows >= 0) & (rows < mask.shape[0]))[:, None] & ((cols >= 0) & (cols < mask.shape[1]))[None, :]
    return mask[np.clip(rows, 0, mask.shape[0] - 1)][:, np.clip(cols, 0, mask.shape[1] - 1)] & inside


def _basis(reader: PatchReader, grid: Grid, slide_id: str, name: str) -> StainBasis:
    """The stain basis: standard, or fitted on a reproducible sample of this slide's tiles."""
    if name != "fitted" or not len(grid):
        return BASES["standard"]()
    rng = np.random.default_rng(slide_seed(slide_id))
    sample = np.sort(rng.choice(len(grid), min(FIT_TILES, len(grid)), replace=False))
    return BASES[name](np.concatenate([batch.reshape(-1, 3) for _, batch in reader.read(sample)]))

