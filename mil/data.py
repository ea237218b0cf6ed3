"""Feature bags for MIL: read one slide's instance features, and a torch Dataset over a cohort.

Three file layouts are read, so features made elsewhere train here unchanged:

- this project's bags (schemas ``pathology-bag/1`` and ``/2``): ``/features/<encoder>`` (N, D) and ``/coords``;
- CLAM / TRIDENT (and STAMP) feature files: a dataset at the root, ``/features`` (STAMP:
  ``/feats``), (N, D) or (1, N, D), and ``/coords`` (N, 2);
- ``.pt`` tensors (CLAM's ``pt_files``), loaded with ``weights_only=True``: a file holding
  anything but tensors is refused, never unpickled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from pathology.bag import READABLE_SCHEMAS, SCHEMA, BagError
from pathology.errors import InputError
from pathology.h5rows import read_rows
from pathology.safeload import RefusedPickleError, load_tensors

if TYPE_CHECKING:
    from .manifest import Cohort

log = logging.getLogger(__name__)

BAG_SUFFIXES = (".h5", ".pt")
# Root-level feature datasets of other tools: CLAM and TRIDENT write "features", STAMP "feats".
ROOT_FEATURE_NAMES = ("features", "feats")
PT_NAME = "pt"
# CLAM's feature folder keeps its .h5 and .pt files in these subfolders.
CLAM_SUBDIRS = {".h5": "h5_files", ".pt": "pt_files"}

Select = Callable[[int], np.ndarray]  # N -> sorted instance indices to read


@dataclass
class BagFeatures:
    features: np.ndarray        # float32 (N, D)
    coords: np.ndarray | None   # int64 (N, 2) level-0 x, y; None when the file has none in pixels
    name: str                   # the feature set: "<encoder>", "features"/"feats" (root dataset), "pt"


def find_bag(bags_dir: str | Path, slide_id: str) -> Path | None:
    """The bag of ``slide_id`` in ``bags_dir``: ``<slide_id>.h5`` then ``<slide_id>.pt``, also
    inside CLAM's ``h5_files/`` and ``pt_files/`` subfolders; None when there is none."""
    bags_dir = Path(bags_dir)
    for suffix in BAG_SUFFIXES:
        for folder in (bags_dir, bags_dir / CLAM_SUBDIRS[suffix]):
            path = folder / f"{slide_id}{suffix}"
            if path.is_file():
                return path
    return None


def available_features(path: str | Path) -> list[str]:
    """Feature sets a bag offers: encoder names for our bags (empty before ``pathology embed``),
    the root dataset's name for CLAM/TRIDENT/STAMP files, ``["pt"]`` for a ``.pt`` tensor."""
    path = Path(path)
    if path.suffix == ".pt":
        _check_exists(path)
        return [PT_NAME]
    with _open_h5(path) as f:
        return _h5_feature_names(f, path)


def read_features(path: str | Path, features: str | None = None) -> BagFeatures:
    """Instance features (float32) and level-0 coordinates of one bag.

    ``features`` names the feature set; None takes the only one present. Raises
    :class:`BagError` for a missing or unreadable file, a missing feature set, an empty
    bag, or NaN/inf features.
    """
    return _read(Path(path), features)[0]


def probe_bag(path: str | Path, features: str | None = None) -> tuple[int, int]:
    """(N, D) of a bag's feature set from the HDF5 header alone (a ``.pt`` file is loaded).

    Raises :class:`BagError` as :func:`read_features` does, except for NaN values (not read).
    """
    path = Path(path)
    if path.suffix == ".pt":
        return read_features(path, features).features.shape
    with _open_h5(path) as f:
        _, ds, _, n = _feature_dataset(f, path, features)
        return n, int(ds.shape[-1])


def _read(path: Path, features: str | None, select: Select | None = None) -> tuple[BagFeatures, np.ndarray]:
    """The instances ``select(N)`` of a bag (all when None) and their indices.

    HDF5 reads touch only the selected rows: a 4096-instance sample of a 100,000-instance
    bag is read in a few tens of ms instead of reading the whole bag. NaN/inf are checked
    on the rows read.
    """
    if path.suffix == ".pt":
        bag = _read_pt(path, features)
        index = np.arange(len(bag.features)) if select is None else select(len(bag.features))
        if len(index) < len(bag.features):
            bag = BagFeatures(bag.features[index], None, bag.name)
    else:
        with _open_h5(path) as f:
            name, ds, lead, n = _feature_dataset(f, path, features)
            index = np.arange(n) if select is None else select(n)
            subset = index if len(index) < n else None
            bag = BagFeatures(_to_float32(_rows(ds, lead, subset)), _read_coords(f, path, n, subset), name)
    _check_values(path, bag.features)
    return bag, index


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise BagError(f"{path}: no such bag file")


def _open_h5(path: Path) -> h5py.File:
    _check_exists(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise BagError(f"{path}: not a readable HDF5 file ({exc})") from None


def _is_ours(f: h5py.File) -> bool:
    return isinstance(f.get("features"), h5py.Group)


def _h5_feature_names(f: h5py.File, path: Path) -> list[str]:
    schema = f.attrs.get("schema")
    schema = schema.decode() if isinstance(schema, bytes) else schema
    if _is_ours(f):
        return sorted(k for k, v in f["features"].items() if isinstance(v, h5py.Dataset))
    if schema is not None and schema not in READABLE_SCHEMAS:
        raise BagError(f"{path}: unsupported bag schema {schema!r} (this version reads "
                       f"{' and '.join(map(repr, READABLE_SCHEMAS))}; it writes {SCHEMA!r})")
    if schema in READABLE_SCHEMAS:
        return []
    roots = [name for name in ROOT_FEATURE_NAMES if isinstance(f.get(name), h5py.Dataset)]
    if not roots:
        raise BagError(f"{path}: not a feature file (no /features group, no root dataset "
                       f"{' or '.join('/' + n for n in ROOT_FEATURE_NAMES)})")
    return roots[:1]


def _choose(path: Path, names: list[str], features: str | None, ours: bool) -> str:
    if features is None:
        if len(names) == 1:
            return names[0]
        if not names:
            raise BagError(f"{path}: the bag holds no features yet; run `pathology embed` on it")
        raise BagError(f"{path}: the bag holds several feature sets ({', '.join(names)}); "
                       f"choose one with --features")
    if features in names:
        return features
    hint = "; run `pathology embed` with that encoder" if ours else ""
    raise BagError(f"{path}: no feature set {features!r} (has: {', '.join(names) or 'none'}){hint}")


def _feature_dataset(f: h5py.File, path: Path, features: str | None) -> tuple[str, h5py.Dataset, bool, int]:
    """The chosen feature dataset, whether it has TRIDENT's leading 1, and N (> 0)."""
    name = _choose(path, _h5_feature_names(f, path), features, _is_ours(f))
    ds = f["features"][name] if _is_ours(f) else f[name]
    lead = ds.ndim == 3 and ds.shape[0] == 1
    if ds.ndim - lead != 2:
        raise BagError(f"{path}: features have shape {ds.shape}, expected (N, D) or (1, N, D)")
    n = int(ds.shape[lead])
    if n == 0:
        raise BagError(f"{path}: empty bag (0 instances)")
    return name, ds, lead, n


def _rows(ds: h5py.Dataset, lead: bool, index: np.ndarray | None) -> np.ndarray:
    """All rows of an (N, ...) or (1, N, ...) dataset, or the ``index`` rows."""
    if index is None:
        return ds[0] if lead else ds[()]
    return read_rows(ds, index, lead)


def _to_float32(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.float16:  # torch converts float16 ~4x faster than numpy
        return torch.from_numpy(np.ascontiguousarray(array)).float().numpy()
    return array.astype(np.float32, copy=False)


def _read_coords(f: h5py.File, path: Path, n: int, index: np.ndarray | None) -> np.ndarray | None:
    ds = f.get("coords")
    if not isinstance(ds, h5py.Dataset):
        return None
    if f.attrs.get("unit") == "um" or "tile_size_um" in f.attrs:  # STAMP v2 stores micrometres
        log.debug("%s: coordinates are in micrometres, not level-0 pixels; not used", path)
        return None
    lead = ds.ndim == 3 and ds.shape[0] == 1
    if ds.shape[lead:] != (n, 2):
        raise BagError(f"{path}: /coords has shape {ds.shape}, expected ({n}, 2) to match the features")
    coords = _rows(ds, lead, index)
    return np.rint(coords).astype(np.int64) if coords.dtype.kind == "f" else coords.astype(np.int64)


def _read_pt(path: Path, features: str | None) -> BagFeatures:
    _check_exists(path)
    _choose(path, [PT_NAME], features, ours=False)
    try:
        obj = load_tensors(path)
    except RefusedPickleError as exc:
        raise BagError(f"{path}: refused to load: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure means "not a plain tensor file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BagError(f"{path}: not a PyTorch tensor file ({first})") from None
    if not isinstance(obj, torch.Tensor):
        raise BagError(f"{path}: holds a {type(obj).__name__}, expected one (N, D) tensor")
    x = obj.detach()
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise BagError(f"{path}: tensor has shape {tuple(obj.shape)}, expected (N, D) or (1, N, D)")
    if len(x) == 0:
        raise BagError(f"{path}: empty bag (0 instances)")
    return BagFeatures(x.to(torch.float32).numpy(), None, PT_NAME)


def _check_values(path: Path, x: np.ndarray) -> None:
    # One float64 sum per instance finds any NaN or inf without an (N, D) temporary.
    bad = ~np.isfinite(np.add.reduce(x, axis=1, dtype=np.float64))
    if bad.any():
        raise BagError(f"{path}: {int(bad.sum())} of {len(x)} instances have NaN or infinite features "
                       f"(first: instance {int(np.argmax(bad))})")


class BagDataset(torch.utils.data.Dataset):
    """One item per case of a cohort (a slide, or a patient after
    :meth:`mil.manifest.Cohort.by_patient`, whose slides' instances are pooled into one bag):
    its instance features, labels and instance indices.

    ``max_instances`` draws a random subset without replacement from bags larger than it,
    reproducibly from (seed, epoch, row); pass None for evaluation. ``in_memory`` reads
    every bag once (float32) instead of at each access. HDF5 bags are checked at
    construction from their headers (feature set present, non-empty, one dimension for
    all), so a bad bag stops the run before training; NaN/inf are found when a bag is read.
    """

    def __init__(self, cohort: Cohort, rows: Sequence[int] | None = None, *, features: str | None = None,
                 max_instances: int | None = None, in_memory: bool = False, seed: int = 0):
        if max_instances is not None and max_instances < 1:
            raise InputError(f"max_instances must be at least 1, got {max_instances}")
        self.cohort = cohort
        self.rows = list(range(len(cohort.table))) if rows is None else [int(r) for r in rows]
        self.features = features
        self.max_instances = max_instances
        self.seed = seed
        self.epoch = 0
        table = cohort.table
        missing = [table.at[r, "slide_id"] for r in self.rows if not table.at[r, "bag_path"]]
        if missing:
            raise BagError(f"{cohort.source}: no bag located for {len(missing)} slide(s) "
                             f"(first: {missing[0]}); load the manifest with bags_dir")
        # a case's bag files: one per slide (several for a patient)
        self.files = [tuple(map(Path, p)) if isinstance(p, tuple) else (Path(p),)
                      for p in (table.at[r, "bag_path"] for r in self.rows)]
        self.paths = [f[0] for f in self.files]
        self._labels = {t.name: cohort.labels(t.name) for t in cohort.tasks}
        self._cache: list[np.ndarray] | None = None
        if in_memory:
            self._cache = [_concat([read_features(p, features).features for p in f]) for f in self.files]
            dims = {i: x.shape[1] for i, x in enumerate(self._cache)}
        else:  # headers only; .pt files would have to be loaded whole, so only the first is
            dims = {}
            for i, files in enumerate(self.files):
                for p in files:
                    if p.suffix == ".pt" and i != 0:
                        continue
                    d = probe_bag(p, features)[1]
                    if dims.setdefault(i, d) != d:
                        raise BagError(f"{p}: features have dimension {d}, but {files[0]} has {dims[i]}")
        self._dim = dims.get(0, 0)
        for i, d in dims.items():
            if d != self._dim:
                raise BagError(f"{self.paths[i]}: features have dimension {d}, but {self.paths[0]} has {self._dim}")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        """Feature dimension D shared by every bag."""
        return self._dim

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose instance subsets ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def instance_index(self, i: int, n: int) -> np.ndarray:
        """Sorted instance indices item ``i`` uses from its bag of ``n`` instances."""
        if self.max_instances is None or n <= self.max_instances:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, self.epoch, self.rows[i]])
        return np.sort(rng.choice(n, self.max_instances, replace=False))

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        if self._cache is not None:
            x = self._cache[i]
            index = self.instance_index(i, len(x))
            x = x if len(index) == len(x) else x[index]
        elif len(self.files[i]) == 1:
            bag, index = _read(self.files[i][0], self.features, lambda n: self.instance_index(i, n))
            x = bag.features
        else:  # a patient's slides: read whole, pooled, then subsampled as one bag
            x = _concat([_read(p, self.features)[0].features for p in self.files[i]])
            index = self.instance_index(i, len(x))
            x = x if len(index) == len(x) else x[index]
        if x.shape[1] != self._dim:
            raise BagError(f"{self.paths[i]}: features have dimension {x.shape[1]}, expected {self._dim}")
        labels = {name: torch.tensor(values[row], dtype=torch.float32) for name, values in self._labels.items()}
        return {"x": torch.from_numpy(x), "row": row, "slide_id": str(self.cohort.table.at[row, "slide_id"]),
                "index": torch.from_numpy(index.astype(np.int64)), "labels": labels}


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """One bag of several slides' instances (in slide order); the first when there is one."""
    if len(parts) == 1:
        return parts[0]
    dims = {p.shape[1] for p in parts}
    if len(dims) > 1:
        raise BagError(f"a patient's slides have features of different dimensions ({sorted(dims)})")
    return np.concatenate(parts, axis=0)
