"""Heatmaps over the feature files of CLAM and TRIDENT (``features`` and ``coords`` at the root of
an .h5), given their slide: what a bag holds beside its features (the overview picture, the
tissue mask, the tissue share of each patch) is made from the slide, the way the tiler makes it,
so a bag exported with ``pathology export`` draws the same heatmap as the bag itself.

The patch geometry comes from the ``coords`` attributes: TRIDENT's ``patch_size_level0`` (or
``patch_size`` × ``level0_magnification`` / ``target_magnification``), or CLAM's ``patch_level``
and ``patch_size`` (its side at that level). CLAM's feature extraction does not copy them from
its patch files; a file without them is refused with a message saying so.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from ..cores import available_cores
from ..slide import SLIDE_EXTENSIONS, Slide, open_slide
from ..tiling.grid import tissue_fractions
from ..tiling.pipeline import tissue_overview
from ..tissue import TissueParams
from .sources import BagView, HeatmapError

ROOT_FEATURES = ("features", "feats")   # CLAM and TRIDENT write "features", STAMP "feats"


def is_foreign(path: str | Path) -> bool:
    """Whether ``path`` is another tool's feature file (a root feature dataset, no bag schema)."""
    try:
        with h5py.File(path, "r") as f:
            return "schema" not in f.attrs and any(isinstance(f.get(n), h5py.Dataset) for n in ROOT_FEATURES)
    except OSError:
        return False


def find_slide(path: Path, slide: Path | None) -> Path:
    """The slide of the feature file ``path``: ``slide`` itself, or the file ``<stem>.<ext>`` in
    the folder ``slide``."""
    if slide is None:
        raise HeatmapError(f"{path}: a CLAM/TRIDENT feature file records no slide; pass --slide FILE_OR_DIR")
    if slide.is_dir():
        found = sorted(p for p in slide.iterdir() if p.stem == path.stem and p.suffix.lower() in SLIDE_EXTENSIONS)
        if not found:
            raise HeatmapError(f"{path}: no slide named {path.stem}.* in {slide}")
        return found[0]
    if not slide.is_file():
        raise HeatmapError(f"--slide {slide}: no such file or folder")
    return slide


def read_foreign(path: str | Path, slide: Path | None, tissue: TissueParams = TissueParams()) -> BagView:
    """A :class:`BagView` of a CLAM/TRIDENT feature file over its slide; one-line errors."""
    path = Path(path)
    slide_path = find_slide(path, slide)
    with h5py.File(path, "r") as f:
        ds = f.get("coords")
        if not isinstance(ds, h5py.Dataset):
            raise HeatmapError(f"{path}: no /coords: the patches cannot be placed on the slide")
        coords = np.asarray(ds[()]).reshape(-1, 2)
        coords = np.rint(coords).astype(np.int64) if coords.dtype.kind == "f" else coords.astype(np.int64)
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in ds.attrs.items()}
    with open_slide(slide_path) as s:
        size0, level, size = _geometry(path, attrs, s)
        mpp = s.require_mpp()
        with ThreadPoolExecutor(available_cores(), thread_name_prefix="heatmap") as pool:
            thumb, mask, scale = tissue_overview(s, tissue, pool, available_cores())
        fractions = tissue_fractions(mask.mask, scale, coords[:, 0].astype(np.float64),
                                     coords[:, 1].astype(np.float64), (size0, size0))
        record = {"slide_path": str(slide_path), "mpp_level0": mpp.x, "patch_size": size, "read_level": level,
                  "stain": {"method": "none"},
                  "tiling": {"level_dimensions": s.level_dimensions, "backend": s.backend}}
    return BagView(path=path, slide_id=path.stem, attrs=record, coords=coords, patch_size0=np.array([size0, size0]),
                   tissue_fraction=fractions, thumbnail=thumb, tissue_mask=mask.mask,
                   thumb_downsample=np.asarray(scale, np.float64), has_patches=False, foreign=True)


def _geometry(path: Path, attrs: dict, slide: Slide) -> tuple[float, int, int]:
    """(level-0 patch side, level to read patches from, patch side at that level's output)."""
    if "patch_size_level0" in attrs or {"level0_magnification", "target_magnification"} <= set(attrs):
        size = int(attrs.get("patch_size", 0)) or int(attrs["patch_size_level0"])
        size0 = float(attrs["patch_size_level0"]) if "patch_size_level0" in attrs else \
            size * float(attrs["level0_magnification"]) / float(attrs["target_magnification"])
        return size0, slide.best_level_for(size0 / size), size
    if {"patch_level", "patch_size"} <= set(attrs):
        level, size = int(attrs["patch_level"]), int(attrs["patch_size"])
        if not 0 <= level < slide.level_count:
            raise HeatmapError(f"{path}: coords attr patch_level {level}, but the slide has {slide.level_count} "
                               "level(s): is it this file's slide?")
        return size * slide.level_downsample_xy(level)[0], level, size
    raise HeatmapError(f"{path}: coords carry no patch geometry (TRIDENT's patch_size_level0, or CLAM's "
                       "patch_level and patch_size, which CLAM keeps in its patches/<slide>.h5 files)")
