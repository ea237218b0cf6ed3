"""One slide's heatmaps: for each task an overlay picture, a top/bottom-k montage, the
per-patch scores as CSV and a QuPath GeoJSON, under ``<out>/<slide_id>/``."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..batch import Outcome
from ..errors import InputError
from ..inputs import SlideInput
from .background import background, output_grid
from .files import safe_name, write_csv, write_json, write_png
from .foreign import is_foreign, read_foreign
from .geojson import feature_collection, patch_features, tissue_features
from .montage import read_patches, render_montage
from .overlay import blend, colour_lut, with_legend
from .raster import paint_mean, smooth
from .scores import NORMALIZERS, Normalized, extremes, normalize
from .slides import locate_slide, open_bag_slide
from .sources import AttentionSource, BagView, HeatmapError, read_bag

log = logging.getLogger(__name__)

CSV_HEADER = ["patch", "x", "y", "width", "height", "tissue_fraction", "score", "normalized", "rank"]


@dataclass(frozen=True)
class HeatmapOptions:
    """Everything ``pathology heatmap`` lets the user choose; checked on creation so a bad
    value fails before any slide."""

    tasks: tuple[str, ...] = ()              # empty: every task in the attention
    normalization: str = "percentile"        # a key of scores.NORMALIZERS
    percentiles: tuple[float, float] = (1.0, 99.0)
    resolution: float | None = None          # µm per output px; None with max_size None: the bag thumbnail's
    max_size: int | None = None              # longer side of the output, px
    smooth_um: float = 0.0                   # Gaussian σ over the score map, µm; 0: none
    cmap: str = "jet"
    alpha: float = 0.5
    top_k: int = 8
    slide: Path | None = None                # slide file, or folder of slides (default: the bag's slide_path;
                                             # required for CLAM/TRIDENT feature files)

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZERS:
            raise InputError(f"unknown normalization {self.normalization!r}; choose {', '.join(NORMALIZERS)}")
        if self.resolution is not None and self.max_size is not None:
            raise InputError("give --resolution or --max-size, not both")
        if (self.resolution is not None and self.resolution <= 0) or \
                (self.max_size is not None and self.max_size < 16):
            raise InputError(f"--resolution must be > 0 and --max-size >= 16, got {self.resolution}, {self.max_size}")
        if not 0 <= self.percentiles[0] < self.percentiles[1] <= 100:
            raise InputError(f"--percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"--alpha must be within 0-1, got {self.alpha}")
        if self.top_k < 0 or self.smooth_um < 0:
            raise InputError(f"--top-k and --smooth must be >= 0, got {self.top_k} and {self.smooth_um}")
        colour_lut(self.cmap)  # unknown names fail here, before any slide


def heatmap_slide(bag_path: str | Path, attention: AttentionSource, out_dir: str | Path,
                  options: HeatmapOptions = HeatmapOptions()) -> Outcome:
    """Write the heatmap outputs of one bag, or of a CLAM/TRIDENT feature file over its slide
    (``options.slide``); raises :class:`HeatmapError` (one line) on bad input."""
    t0 = time.perf_counter()
    bag = read_foreign(bag_path, options.slide) if is_foreign(bag_path) else read_bag(bag_path)
    scores = select_tasks(attention(bag), options.tasks, bag)
    grid = output_grid(bag, options.resolution, options.max_size)
    slide_path = locate_slide(bag, options.slide)
    opener = lambda why: open_bag_slide(bag, slide_path, why)
    picture, tissue = background(bag, grid, opener)
    lut = colour_lut(options.cmap)
    folder = Path(out_dir) / bag.slide_id
    tissue_geo = tissue_features(bag.tissue_mask, bag.thumb_downsample, bag.qupath_origin)
    outputs: list[Callable[[], Path]] = []   # written once every task is rendered: no partial slide
    for task, raw in scores.items():
        norm = normalize(raw, options.normalization, options.percentiles)
        mean, covered = paint_mean(grid, bag.coords, bag.patch_size0, norm.values)
        if options.smooth_um > 0:
            mean = smooth(mean, covered, options.smooth_um / grid.mpp)
        painted = blend(picture, mean, covered & tissue, lut, options.alpha)
        smoothing = f" · smoothed σ {options.smooth_um:g} µm" if options.smooth_um > 0 else ""
        title = f"{bag.slide_id} · {task} · {options.normalization} · {grid.mpp:.3g} µm/px{smoothing}"
        name = safe_name(task)
        measurements = {f"{task} attention": raw, f"{task} attention ({options.normalization})": norm.values,
                        "tissue fraction": bag.tissue_fraction}
        geo = feature_collection(patch_features(bag.coords, bag.patch_size0, task, measurements,
                                                tuple(int(c) for c in lut[-1]), bag.qupath_origin) + tissue_geo)
        outputs += [partial(write_png, folder / f"{name}.heatmap.png",
                            with_legend(painted, lut, norm.ticks, title, norm.label)),
                    partial(write_csv, folder / f"{name}.scores.csv", CSV_HEADER, score_rows(bag, raw, norm)),
                    partial(write_json, folder / f"{name}.geojson", geo)]
        if options.top_k:
            outputs.append(partial(write_png, folder / f"{name}.montage.png",
                                   montage(bag, task, raw, options.top_k, opener)))
    for write in outputs:
        write()
    log.debug("%s: heatmaps for %s in %s", bag.slide_id, ", ".join(scores), folder)
    return Outcome(bag.slide_id, "done", len(bag.coords), time.perf_counter() - t0,
                   f"{', '.join(scores)} → {folder}")


def heatmap_job(bag: SlideInput, advance: Callable[[int], None], *, attention: AttentionSource, out: Path,
                options: HeatmapOptions) -> Outcome:
    """One bag of a heatmap batch (:func:`pathology.batch.run_batch`)."""
    outcome = heatmap_slide(bag.path, attention, out, options)
    advance(outcome.count)
    return outcome


def select_tasks(scores: dict[str, np.ndarray], tasks: tuple[str, ...], bag: BagView) -> dict[str, np.ndarray]:
    """The requested tasks' scores (all when ``tasks`` is empty), in the order asked."""
    if not tasks:
        return dict(sorted(scores.items()))
    missing = [t for t in tasks if t not in scores]
    if missing:
        raise HeatmapError(f"{bag.path}: no attention for task {', '.join(map(repr, missing))} "
                           f"(has: {', '.join(sorted(scores)) or 'none'})")
    return {t: scores[t] for t in tasks}


def ranks(raw: np.ndarray) -> np.ndarray:
    """Rank of each patch, 1 for the highest score (ties in the bag's row order)."""
    rank = np.empty(len(raw), np.int64)
    rank[np.argsort(-raw, kind="stable")] = np.arange(1, len(raw) + 1)
    return rank


def score_rows(bag: BagView, raw: np.ndarray, norm: Normalized) -> list[list]:
    """One CSV row per patch, in the bag's row order."""
    rank = ranks(raw)
    w, h = (int(round(v)) for v in bag.patch_size0)
    return [[i, int(x), int(y), w, h, f"{tf:.4f}", repr(float(s)), f"{n:.6f}", int(r)]
            for i, ((x, y), tf, s, n, r) in enumerate(zip(bag.coords, bag.tissue_fraction, raw, norm.values, rank))]


def montage(bag: BagView, task: str, raw: np.ndarray, k: int, opener) -> Image.Image:
    """The montage picture of the ``k`` highest- and ``k`` lowest-scoring patches."""
    top, low = extremes(raw, k)
    patches = read_patches(bag, np.concatenate([top, low]), opener)
    rank = ranks(raw)

    def captions(rows: np.ndarray) -> list[str]:
        return [f"#{rank[i]}  {raw[i]:.4g}\nx {bag.coords[i, 0]}  y {bag.coords[i, 1]}" for i in rows]

    sections = [(f"highest attention (top {len(top)})", patches[:len(top)], captions(top)),
                (f"lowest attention (bottom {len(low)})", patches[len(top):], captions(low))]
    return render_montage(sections, f"{bag.slide_id} · {task} · {len(raw)} patches · #1 = highest")
