"""What a heatmap is drawn from: a bag's geometry and overview, and per-patch attention
(an attention file from ``mil predict``; :mod:`pathology.run.attention` computes it from a trained run
instead)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..bag import READABLE_SCHEMAS, SCHEMA, read_attrs
from ..errors import UserError

# Reads the attention of one bag: task -> (N,) scores, rows aligned with the bag's coords.
AttentionSource = Callable[["BagView"], dict[str, np.ndarray]]


class HeatmapError(UserError):
    """Bad heatmap input; the message is one line naming the file and the field."""


@dataclass
class BagView:
    """The parts of a bag a heatmap needs (the patches themselves stay on disk)."""

    path: Path
    slide_id: str                 # the bag's file stem, as `mil` names bags and attention files
    attrs: dict
    coords: np.ndarray            # int64 (N, 2) level-0 top-left corners
    patch_size0: np.ndarray       # float (2,) level-0 patch width, height
    tissue_fraction: np.ndarray   # float32 (N,)
    thumbnail: np.ndarray         # uint8 (h, w, 3)
    tissue_mask: np.ndarray       # bool (h, w)
    thumb_downsample: np.ndarray  # float (2,) level-0 px per thumbnail px (x, y)
    has_patches: bool
    foreign: bool = False         # a CLAM/TRIDENT feature file (heatmap.foreign), not a bag

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 width and height of the slide."""
        levels = (self.attrs.get("tiling") or {}).get("level_dimensions")
        if levels:
            return int(levels[0][0]), int(levels[0][1])
        h, w = self.thumbnail.shape[:2]
        return round(w * self.thumb_downsample[0]), round(h * self.thumb_downsample[1])

    @property
    def qupath_origin(self) -> np.ndarray:
        """The level-0 pixel QuPath shows as (0, 0) (:mod:`pathology.slide.qupath`), as the tiler
        recorded it; (0, 0) for bags tiled before it was recorded."""
        return np.asarray((self.attrs.get("tiling") or {}).get("qupath_origin") or (0, 0), np.float64)

    @property
    def mpp(self) -> float:
        """Level-0 µm/px (mean of x and y for non-square pixels)."""
        return float(np.mean(np.broadcast_to(np.asarray(self.attrs["mpp_level0"], np.float64), (2,))))


def read_bag(path: str | Path) -> BagView:
    """A bag's (``pathology-bag/1`` or ``/2``) geometry, thumbnail and tissue mask; one-line errors."""
    path = Path(path)
    try:
        attrs = read_attrs(path)
    except OSError as exc:
        raise HeatmapError(f"{path}: not a readable bag ({' '.join(str(exc).split())})") from None
    if attrs.get("schema") not in READABLE_SCHEMAS:
        raise HeatmapError(f"{path}: schema is {attrs.get('schema')!r}, expected {SCHEMA!r} (a bag from "
                           "`pathology tile`)")
    with h5py.File(path, "r") as f:
        missing = [k for k in ("coords", "tissue_fraction", "thumbnail", "tissue_mask") if k not in f]
        if missing:
            raise HeatmapError(f"{path}: missing {', '.join('/' + k for k in missing)} (re-tile the slide)")
        coords = f["coords"][:].astype(np.int64)
        size0 = np.broadcast_to(np.asarray(f["coords"].attrs["patch_size_level0"], np.float64), (2,)).copy()
        return BagView(path=path, slide_id=path.stem, attrs=attrs, coords=coords,
                       patch_size0=size0, tissue_fraction=f["tissue_fraction"][:].astype(np.float32),
                       thumbnail=f["thumbnail"][:], tissue_mask=f["tissue_mask"][:].astype(bool),
                       thumb_downsample=np.broadcast_to(np.asarray(f["thumbnail"].attrs["downsample"],
                                                                   np.float64), (2,)).copy(),
                       has_patches="patches" in f)


def check_scores(origin: str, task: str, scores: np.ndarray, bag: BagView) -> np.ndarray:
    """``scores`` as float64 (N,), after checking it fits ``bag`` row for row."""
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(bag.coords):
        raise HeatmapError(f"{origin}: attention/{task} has {len(scores)} rows but bag {bag.path} has "
                           f"{len(bag.coords)} patches")
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise HeatmapError(f"{origin}: attention/{task} has {bad} non-finite values")
    return scores


def attention_file(path: str | Path) -> AttentionSource:
    """Attention from ``mil predict``'s ``attention/<slide_id>.h5``: ``coords`` (N, 2) and one
    ``attention/<task>`` (N,) per task. A folder means ``<folder>/<slide_id>.h5``."""
    path = Path(path)

    def read(bag: BagView) -> dict[str, np.ndarray]:
        file = path / f"{bag.slide_id}.h5" if path.is_dir() else path
        if not file.is_file():
            raise HeatmapError(f"{file}: no attention file for slide {bag.slide_id}")
        try:
            with h5py.File(file, "r") as f:
                group = f.get("attention")
                if not isinstance(group, h5py.Group) or not len(group):
                    raise HeatmapError(f"{file}: no attention/<task> datasets")
                if "coords" not in f:
                    raise HeatmapError(f"{file}: no coords dataset to match against the bag")
                coords = f["coords"][:]
                scores = {task: ds[:] for task, ds in group.items() if isinstance(ds, h5py.Dataset)}
        except OSError as exc:
            raise HeatmapError(f"{file}: not a readable HDF5 file ({' '.join(str(exc).split())})") from None
        check_coords(str(file), coords, bag)
        return {task: check_scores(str(file), task, s, bag) for task, s in scores.items()}

    return read


def check_coords(origin: str, coords: np.ndarray, bag: BagView) -> None:
    """Raise unless ``coords`` are the bag's, row for row (attention of another tiling would
    paint the wrong places)."""
    coords = np.asarray(coords)
    if coords.shape != bag.coords.shape:
        raise HeatmapError(f"{origin}: {len(coords)} attention rows (coords {coords.shape}) but bag "
                           f"{bag.path} has {len(bag.coords)} patches")
    differ = np.flatnonzero((coords != bag.coords).any(axis=1))
    if len(differ):
        i = int(differ[0])
        raise HeatmapError(f"{origin}: coords differ from bag {bag.path} in {len(differ)} row"
                           f"{'s' if len(differ) > 1 else ''} (first: row {i}, "
                           f"{tuple(int(v) for v in coords[i])} vs {tuple(int(v) for v in bag.coords[i])})")
