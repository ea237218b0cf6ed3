"""HDF5 bags, schema ``pathology-bag/1``: one file per slide, written atomically.

Layout (docs/architecture.md, "Bags"): root attrs ``schema, slide_id, slide_path, slide_fingerprint,
mpp_level0, mpp_source, target_mpp, patch_size, read_level, tiling (JSON), stain
(JSON), software_version, created``; ``/coords`` int64 (N, 2) level-0 top-left corners
with attr ``patch_size_level0``; ``/tissue_fraction`` float32 (N,); optional
``/patches`` uint8 (N, S, S, 3), one chunk per patch; ``/features/<encoder>``
added later by ``pathology embed``. Non-square pixels store ``mpp_level0`` and
``patch_size_level0`` as (x, y) pairs, square ones as scalars.

Beyond the table, ``/thumbnail`` (RGB) and ``/tissue_mask`` (uint8 0/1) at the
tissue-detection resolution, with attr ``downsample`` (level-0 px per pixel, x and y),
let heatmaps and QC be drawn without the slide. They are the slide's tissue image
only: label and macro images are never read.

A bag is written to a temporary name beside it (:mod:`pathology.publish`) and renamed when
complete, so a bag that exists is whole.

Patches are stored uncompressed by default. Lossless deflate shrinks stain-normalized H&E
patches by only 1.2-1.35x (1.24x on CMU-1, 1.34x on the synthetic benchmark slide) and
un-deflating a 256-px patch (0.4 ms with libdeflate, 0.8 ms through HDF5's zlib) takes as
long as the default encoder needs to embed it; ``compression="gzip"`` trades that CPU for
disk when bags are archived. Both are standard HDF5 filters any reader decodes.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import imagecodecs
import numpy as np

from . import __version__
from .errors import UserError
from .publish import commit, partial_path

SCHEMA = "pathology-bag/1"


class BagError(UserError):
    """A bag (or feature file) that cannot be used; the message names the file and what is wrong."""

COMPRESSIONS = ("none", "gzip")
GZIP_LEVEL = 1  # libdeflate level 1: standard gzip chunks at ~3x zlib's speed


def fingerprint(path: str | Path) -> str:
    """Cheap identity of a slide file: size plus SHA-256 of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 1 << 20))
            h.update(fh.read(1 << 20))
    return f"size-head-tail-sha256:{h.hexdigest()}"


def pair_or_scalar(xy: tuple[float, float], integer: bool = False) -> Any:
    """Scalar for square geometry, (x, y) otherwise."""
    cast = (lambda v: int(round(v))) if integer else float
    x, y = cast(xy[0]), cast(xy[1])
    return x if np.isclose(x, y, rtol=1e-4) else np.array([x, y])


class BagWriter:
    """Builds one bag in a temporary file; :meth:`commit` renames it into place."""

    def __init__(self, path: str | Path, n_patches: int, patch_size: int, store_patches: bool = True,
                 compression: str = "none"):
        if compression not in COMPRESSIONS:
            raise UserError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.compression = compression
        self._file = h5py.File(self.tmp, "w")
        self.patches = None
        if store_patches:
            self.patches = self._file.create_dataset(
                "patches", shape=(n_patches, patch_size, patch_size, 3), dtype=np.uint8,
                chunks=(1, patch_size, patch_size, 3) if n_patches else None,
                compression="gzip" if compression == "gzip" and n_patches else None,
                compression_opts=GZIP_LEVEL if compression == "gzip" and n_patches else None)

    def write_geometry(self, coords: np.ndarray, tissue_fraction: np.ndarray,
                       patch_size_level0: tuple[float, float]) -> None:
        d = self._file.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
        d.attrs["patch_size_level0"] = pair_or_scalar(patch_size_level0, integer=True)
        self._file.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))

    def write_overview(self, thumbnail: np.ndarray, mask: np.ndarray, downsample: tuple[float, float]) -> None:
        for name, data in (("thumbnail", thumbnail), ("tissue_mask", mask.astype(np.uint8))):
            d = self._file.create_dataset(name, data=data, compression="gzip", compression_opts=4)
            d.attrs["downsample"] = np.asarray(downsample, np.float64)

    def encode(self, batch: np.ndarray) -> list[bytes] | np.ndarray:
        """Compress patches into their stored chunks. Thread-safe: the tiler calls it on
        its worker threads so compression runs in parallel with decoding."""
        if self.compression == "none":
            return batch
        return [imagecodecs.deflate_encode(np.ascontiguousarray(p), level=GZIP_LEVEL) for p in batch]

    def write_encoded(self, start: int, encoded: list[bytes] | np.ndarray) -> None:
        """Store encoded patches ``start … start+len(encoded)`` (main thread only). Each patch
        is its own chunk, written as is: an uncompressed chunk is the patch's bytes, so it
        skips HDF5's chunk cache and its copy too."""
        if self.patches is None:
            return
        if self.compression == "none":
            encoded = np.ascontiguousarray(encoded, dtype=np.uint8)
        for i, chunk in enumerate(encoded):
            self.patches.id.write_direct_chunk((start + i, 0, 0, 0), chunk)

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Write the root attributes, close and atomically rename into place."""
        root = self._file.attrs
        root["schema"] = SCHEMA
        root["software_version"] = __version__
        root["created"] = datetime.now(UTC).isoformat(timespec="seconds")
        for key, value in attrs.items():
            root[key] = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        self._close()
        return commit(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file; an existing bag at ``path`` is left untouched (even when
        HDF5 cannot close the file, e.g. on a full disk)."""
        try:
            self._close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file.id.valid:
            self._file.close()


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes of a bag, with the JSON ones (``tiling``, ``stain``) parsed."""
    with h5py.File(path, "r") as f:
        out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    for key in ("tiling", "stain"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


def completed_with(path: str | Path, slide_fingerprint: str, params: dict[str, Any]) -> str | None:
    """Why the bag at ``path`` must be (re)made, or None if it is complete for this slide
    file and these tiling parameters."""
    path = Path(path)
    if not path.exists():
        return "no bag yet"
    try:
        attrs = read_attrs(path)
    except (OSError, ValueError, KeyError) as exc:  # unreadable file: rebuild it
        return f"existing bag unreadable ({type(exc).__name__})"
    if attrs.get("schema") != SCHEMA:
        return f"existing bag has schema {attrs.get('schema')!r}"
    if attrs.get("slide_fingerprint") != slide_fingerprint:
        return "slide file changed"
    previous = (attrs.get("tiling") or {}).get("params")
    if previous != json.loads(json.dumps(params, sort_keys=True)):
        changed = sorted(k for k in set(previous or {}) | set(params)
                         if (previous or {}).get(k) != json.loads(json.dumps(params.get(k))))
        return f"parameters changed ({', '.join(changed) or 'all'})"
    return None
