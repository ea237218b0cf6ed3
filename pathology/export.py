"""Feature files for other tools (``pathology export``): a bag's features and coordinates in the
layout CLAM's and TRIDENT's loaders read, so features made here train and draw there unchanged.

Both tools keep one HDF5 file per slide with ``features`` (N, D) float32 and ``coords`` (N, 2)
level-0 top-left corners at the root; what differs is where the files go and what the
``coords`` attributes say about the patch geometry:

- ``trident``: ``OUT/<slide_id>.h5`` (TRIDENT's ``features_<encoder>/`` folder), coords int64
  with ``patch_size`` (pixels at the target magnification), ``patch_size_level0``,
  ``level0_magnification``, ``target_magnification``, ``overlap``, ``level0_width``,
  ``level0_height``, ``name``, ``savetodir``. The magnifications are 10 / µm-per-px, written
  exactly (float) rather than rounded to a nominal objective, so that ``patch_size ×
  level0_magnification / target_magnification`` is the bag's level-0 patch extent: a tool
  re-reading the patches reads the pixels the encoder saw.
- ``clam``: ``OUT/h5_files/<slide_id>.h5`` (coords int32, as CLAM's feature extraction writes
  them) with ``patch_level`` (the pyramid level the patches were read from) and ``patch_size``
  (their side at that level, before resizing to the target µm/px), ``downsample``,
  ``level_dim``, ``downsampled_level_dim``, ``name``, ``save_path``; and ``OUT/pt_files/<slide_id>.pt``,
  the features as one plain float32 tensor (``torch.save``), which CLAM's training loader reads.

The files are written atomically (:mod:`pathology.publish`); a rerun rewrites them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .bag import SCHEMA, BagError, open_bag, read_attrs
from .errors import InputError, storage_errors
from .inputs import SlideInput
from .jobs import Outcome
from .publish import publishing

log = logging.getLogger(__name__)

UM_PER_PX_AT_1X = 10.0    # magnification = 10 / µm-per-px (0.25 µm/px = 40x, 0.5 = 20x), the scanners' convention


@dataclass(frozen=True)
class Exported:
    """What an export needs from one bag."""

    slide_id: str
    encoder: str
    features: np.ndarray          # float32 (N, D)
    coords: np.ndarray            # int64 (N, 2) level-0 top-left corners
    patch_size: int               # side at the target µm/px
    patch_size_level0: float      # level-0 extent (x)
    mpp_level0: float             # µm/px (x)
    target_mpp: float
    overlap: int
    read_level: int
    level_dimensions: list[tuple[int, int]]

    def magnifications(self) -> tuple[float, float]:
        """(level-0, target) magnification, 10 / µm-per-px."""
        return UM_PER_PX_AT_1X / self.mpp_level0, UM_PER_PX_AT_1X / self.target_mpp

    def level_downsample(self, level: int) -> tuple[float, float]:
        (w0, h0), (w, h) = self.level_dimensions[0], self.level_dimensions[level]
        return w0 / w, h0 / h


def read_exported(path: str | Path, slide_id: str, encoder: str | None) -> Exported:
    """The features of ``encoder`` (the only set when None) and the geometry of a bag from
    ``pathology tile`` + ``pathology embed``; a :class:`BagError` naming the bag otherwise."""
    path = Path(path)
    attrs = read_attrs(path)
    if attrs.get("schema") != SCHEMA:
        raise BagError(f"{path}: not a bag from `pathology tile` (schema {attrs.get('schema')!r}, "
                       f"expected {SCHEMA!r})")
    tiling = attrs.get("tiling") or {}
    missing = [k for k in ("mpp_level0", "target_mpp", "patch_size", "read_level") if k not in attrs]
    if missing or "level_dimensions" not in tiling:
        raise BagError(f"{path}: lacks {', '.join(missing or ['tiling.level_dimensions'])}; re-tile the slide")
    with open_bag(path) as f:
        group = f.get("features")
        names = sorted(k for k, v in group.items() if isinstance(v, h5py.Dataset)) if isinstance(group, h5py.Group) \
            else []
        name = _choose(path, names, encoder)
        features = np.asarray(group[name][()], np.float32)
        coords = np.asarray(f["coords"][()], np.int64).reshape(-1, 2)
        size0 = np.broadcast_to(np.asarray(f["coords"].attrs["patch_size_level0"], np.float64), (2,))
    if len(features) != len(coords) or features.ndim != 2:
        raise BagError(f"{path}: features/{name} has shape {features.shape} but the bag has {len(coords)} patches")
    mpp = np.broadcast_to(np.asarray(attrs["mpp_level0"], np.float64), (2,))
    return Exported(slide_id=slide_id, encoder=name, features=features, coords=coords,
                    patch_size=int(attrs["patch_size"]), patch_size_level0=float(size0[0]), mpp_level0=float(mpp[0]),
                    target_mpp=float(attrs["target_mpp"]), overlap=int((tiling.get("params") or {}).get("grid", {})
                                                                         .get("overlap", 0)),
                    read_level=int(attrs["read_level"]),
                    level_dimensions=[(int(w), int(h)) for w, h in tiling["level_dimensions"]])


def _choose(path: Path, names: list[str], encoder: str | None) -> str:
    if encoder is not None:
        if encoder not in names:
            raise BagError(f"{path}: no features of encoder {encoder!r} (has: {', '.join(names) or 'none'}); "
                           f"run `pathology embed -e {encoder}` on it")
        return encoder
    if len(names) == 1:
        return names[0]
    if not names:
        raise BagError(f"{path}: the bag holds no features yet; run `pathology embed` on it")
    raise BagError(f"{path}: the bag holds several feature sets ({', '.join(names)}); choose one with --encoder")


def write_trident(bag: Exported, out: Path) -> list[Path]:
    """``out/<slide_id>.h5`` as TRIDENT's patch feature extraction writes it."""
    level0_mag, target_mag = bag.magnifications()
    w0, h0 = bag.level_dimensions[0]
    coords_attrs = {"patch_size": bag.patch_size, "patch_size_level0": int(round(bag.patch_size_level0)),
                    "level0_magnification": level0_mag, "target_magnification": target_mag,
                    "overlap": bag.overlap, "level0_width": w0, "level0_height": h0, "name": bag.slide_id,
                    "savetodir": str(out)}
    path = out / f"{bag.slide_id}.h5"
    _write_h5(path, bag.features, bag.coords.astype(np.int64), coords_attrs,
              {"name": bag.slide_id, "savetodir": str(out), "encoder": bag.encoder})
    return [path]


def write_clam(bag: Exported, out: Path) -> list[Path]:
    """``out/h5_files/<slide_id>.h5`` and ``out/pt_files/<slide_id>.pt`` as CLAM's feature
    extraction writes them, the patch geometry in CLAM's coords attributes."""
    import torch  # the exporter's only use of torch: CLAM's .pt files

    if len(bag.coords) and (bag.coords.max() >= 2 ** 31 or bag.coords.min() < -(2 ** 31)):
        raise BagError(f"{bag.slide_id}: coordinates beyond int32, which CLAM's files hold")
    level = bag.read_level
    dx, dy = bag.level_downsample(level)
    lw, lh = bag.level_dimensions[level]
    coords_attrs = {"patch_level": level, "patch_size": int(round(bag.patch_size_level0 / dx)),
                    "downsample": np.array([dx, dy]), "downsampled_level_dim": np.array([lw, lh]),
                    "level_dim": np.array([lw, lh]), "name": bag.slide_id, "save_path": str(out / "h5_files")}
    h5_path, pt_path = out / "h5_files" / f"{bag.slide_id}.h5", out / "pt_files" / f"{bag.slide_id}.pt"
    _write_h5(h5_path, bag.features, bag.coords.astype(np.int32), coords_attrs, {"encoder": bag.encoder})
    with publishing(pt_path) as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(bag.features)), tmp)
    return [h5_path, pt_path]


def _write_h5(path: Path, features: np.ndarray, coords: np.ndarray, coords_attrs: dict, feature_attrs: dict) -> None:
    with publishing(path) as tmp, storage_errors(path), h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features).attrs.update(feature_attrs)
        f.create_dataset("coords", data=coords).attrs.update(coords_attrs)


FORMATS: dict[str, Callable[[Exported, Path], list[Path]]] = {"trident": write_trident, "clam": write_clam}


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise InputError(f"--to must be one of {', '.join(FORMATS)}, got {name!r}")
    return name


def export_bag(path: str | Path, slide_id: str, to: str, out: str | Path, encoder: str | None = None) -> Outcome:
    """Write one bag's features for the tool ``to`` under ``out``; the outcome counts patches."""
    t0 = time.perf_counter()
    bag = read_exported(path, slide_id, encoder)
    if not len(bag.coords):
        raise BagError(f"{path}: no patches (no tissue found when tiled): nothing to export")
    written = FORMATS[check_format(to)](bag, Path(out))
    log.debug("%s: %s", slide_id, ", ".join(map(str, written)))
    return Outcome(slide_id, "done", len(bag.coords), time.perf_counter() - t0,
                   f"{bag.encoder} ({bag.features.shape[1]}-d) → {', '.join(p.name for p in written)}")


def export_job(bag: SlideInput, advance: Callable[[int], None], *, to: str, out: Path,
               encoder: str | None = None) -> Outcome:
    """One bag of an export batch (:func:`pathology.batch.run_batch`)."""
    outcome = export_bag(bag.path, bag.slide_id, to, out, encoder)
    advance(outcome.count)
    return outcome
