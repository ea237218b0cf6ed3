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
complete, so a bag that exists is whole. A failure of the storage while writing (a full disk,
an I/O error) is raised as a :class:`pathology.errors.StorageError` naming the bag; the
temporary file is closed (HDF5 needs a second close after a failed flush: no broken HDF5
object outlives the error) and removed.

Patches the tiler dropped because they touch a corrupt tile of the slide (``--on-bad-tile
skip``) are listed in ``/skipped_coords`` (int64 (K, 2)) and the tiles in the root attr
``bad_tiles`` (JSON: level, column, row, file offset, the decoder's message).

Patches are stored uncompressed by default. Lossless deflate shrinks stain-normalized H&E
patches by only 1.2-1.35x (1.24x on CMU-1, 1.34x on the synthetic benchmark slide) and
un-deflating a 256-px patch (0.4 ms with libdeflate, 0.8 ms through HDF5's zlib) takes as
long as the default encoder needs to embed it; ``compression="gzip"`` trades that CPU for
disk when bags are archived. Both are standard HDF5 filters any reader decodes.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import imagecodecs
import numpy as np

from . import __version__
from .errors import UserError, storage_errno, storage_error, storage_errors
from .fingerprint import fingerprint, slide_changed
from .publish import commit, partial_path

__all__ = ["SCHEMA", "BagError", "BagWriter", "close_hdf5", "completed_with", "fingerprint", "open_bag",
           "pair_or_scalar", "read_attrs"]

log = logging.getLogger(__name__)

SCHEMA = "pathology-bag/1"


class BagError(UserError):
    """A bag (or feature file) that cannot be used; the message names the file and what is wrong."""

COMPRESSIONS = ("none", "gzip")
GZIP_LEVEL = 1  # libdeflate level 1: standard gzip chunks at ~3x zlib's speed


def pair_or_scalar(xy: tuple[float, float], integer: bool = False) -> Any:
    """Scalar for square geometry, (x, y) otherwise."""
    cast = (lambda v: int(round(v))) if integer else float
    x, y = cast(xy[0]), cast(xy[1])
    return x if np.isclose(x, y, rtol=1e-4) else np.array([x, y])


class BagWriter:
    """Builds one bag in a temporary file; :meth:`commit` renames it into place.

    Patches are appended in grid order (:meth:`write_encoded`); the geometry of the kept
    patches is written last (:meth:`write_geometry`), so patches can be dropped on the way
    (``--on-bad-tile skip``) and the dataset is shrunk to those written."""

    def __init__(self, path: str | Path, n_patches: int, patch_size: int, store_patches: bool = True,
                 compression: str = "none"):
        if compression not in COMPRESSIONS:
            raise UserError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        self.path = Path(path)
        self.tmp = partial_path(self.path)
        self.compression = compression
        self.written = 0
        self._file: h5py.File | None = None
        self.patches = None
        try:
            with storage_errors(self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = h5py.File(self.tmp, "w")
                if store_patches:
                    self.patches = self._file.create_dataset(
                        "patches", shape=(n_patches, patch_size, patch_size, 3), dtype=np.uint8,
                        chunks=(1, patch_size, patch_size, 3) if n_patches else None,
                        compression="gzip" if compression == "gzip" and n_patches else None,
                        compression_opts=GZIP_LEVEL if compression == "gzip" and n_patches else None)
        except BaseException:
            self.abort()
            raise

    def write_geometry(self, coords: np.ndarray, tissue_fraction: np.ndarray,
                       patch_size_level0: tuple[float, float], skipped: np.ndarray | None = None) -> None:
        """The kept patches' corners and tissue shares; ``skipped``: corners of the patches
        dropped over bad tiles."""
        with storage_errors(self.path):
            d = self._file.create_dataset("coords", data=np.asarray(coords, np.int64).reshape(-1, 2))
            d.attrs["patch_size_level0"] = pair_or_scalar(patch_size_level0, integer=True)
            self._file.create_dataset("tissue_fraction", data=np.asarray(tissue_fraction, np.float32))
            if skipped is not None and len(skipped):
                self._file.create_dataset("skipped_coords", data=np.asarray(skipped, np.int64).reshape(-1, 2))

    def write_overview(self, thumbnail: np.ndarray, mask: np.ndarray, downsample: tuple[float, float]) -> None:
        with storage_errors(self.path):
            for name, data in (("thumbnail", thumbnail), ("tissue_mask", mask.astype(np.uint8))):
                d = self._file.create_dataset(name, data=data, compression="gzip", compression_opts=4)
                d.attrs["downsample"] = np.asarray(downsample, np.float64)

    def encode(self, batch: np.ndarray) -> list[bytes] | np.ndarray:
        """Compress patches into their stored chunks. Thread-safe: the tiler calls it on
        its worker threads so compression runs in parallel with decoding."""
        if self.compression == "none":
            return batch
        return [imagecodecs.deflate_encode(np.ascontiguousarray(p), level=GZIP_LEVEL) for p in batch]

    def write_encoded(self, encoded: list[bytes] | np.ndarray, keep: np.ndarray | None = None) -> None:
        """Append encoded patches (those where ``keep`` is true) after those written so far
        (main thread only). Each patch is its own chunk, written as is: an uncompressed chunk
        is the patch's bytes, so it skips HDF5's chunk cache and its copy too."""
        if self.patches is None:
            return
        if self.compression == "none":
            encoded = np.ascontiguousarray(encoded, dtype=np.uint8)
        with storage_errors(self.path):
            for i, chunk in enumerate(encoded):
                if keep is None or keep[i]:
                    self.patches.id.write_direct_chunk((self.written, 0, 0, 0), chunk)
                    self.written += 1

    def commit(self, attrs: dict[str, Any]) -> Path:
        """Write the root attributes, close and atomically rename into place."""
        with storage_errors(self.path):
            if self.patches is not None and self.written < len(self.patches):
                self.patches.resize(self.written, axis=0)  # patches dropped over bad tiles
            root = self._file.attrs
            root["schema"] = SCHEMA
            root["software_version"] = __version__
            root["created"] = datetime.now(UTC).isoformat(timespec="seconds")
            for key, value in attrs.items():
                root[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
            self._close()
        return commit(self.tmp, self.path)

    def abort(self) -> None:
        """Drop the temporary file; an existing bag at ``path`` is left untouched, also when HDF5
        cannot close the file (a full disk). Never raises: the caller is raising the error that
        made it abort."""
        try:
            self._close()
        except Exception as exc:  # noqa: BLE001 - the error that made us abort is the one to report
            log.debug("%s: closing the abandoned temporary file failed too: %s", self.path.name, exc)
        finally:
            self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._file is not None:
            close_hdf5(self._file)


def close_hdf5(file: h5py.File, quiet: bool = False) -> None:
    """Close an HDF5 file that was open for writing. When HDF5 cannot flush it (a full disk),
    the first close fails and leaves the file open; closing again releases it, so no
    half-closed HDF5 object is left to be freed later (that crashed the process). The first
    error is raised, unless ``quiet`` (the caller is already raising the error that made it
    give up on the file)."""
    error = None
    for _ in range(3):
        if not file.id.valid:
            break
        try:
            file.close()
        except Exception as exc:  # noqa: BLE001 - retried, then the first error is raised
            error = error or exc
    if error is not None and not quiet:
        raise error


def open_bag(path: str | Path) -> h5py.File:
    """Open the bag at ``path`` for reading. A file that is not a readable HDF5 file (empty,
    truncated by an interrupted copy, another format) is a :class:`BagError` saying so; an I/O
    error of the disk a :class:`pathology.errors.StorageError`."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise BagError(f"{path}: no such file") from None
    except OSError as exc:
        storage = storage_error(exc, path, "read") if storage_errno(exc) else None
        if storage is not None:
            raise storage from exc
        raise BagError(f"{path}: not a readable bag ({_why_unreadable(path, exc)})") from None


def _why_unreadable(path: str | Path, exc: OSError) -> str:
    text = " ".join(str(exc).split())
    truncated = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if truncated:
        return f"truncated: {truncated.group(1)} of its {truncated.group(2)} bytes; an interrupted copy?"
    if "file signature not found" in text:
        size = Path(path).stat().st_size
        return "empty file" if size == 0 else "not an HDF5 file"
    return text.split("(", 1)[-1].rstrip(")") or text


def read_attrs(path: str | Path) -> dict[str, Any]:
    """Root attributes of a bag, with the JSON ones (``tiling``, ``stain``, ``bad_tiles``) parsed."""
    with open_bag(path) as f:
        out = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    for key in ("tiling", "stain", "bad_tiles"):
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    return out


def completed_with(path: str | Path, slide: str | Path, slide_fingerprint: str, params: dict[str, Any],
                   skipped_ok: bool = True) -> str | None:
    """Why the bag at ``path`` must be (re)made, or None if it is complete for the slide file
    ``slide`` (whose fingerprint is ``slide_fingerprint``; the rule:
    :func:`pathology.fingerprint.slide_changed`) and these tiling parameters. A bag that
    dropped patches over bad tiles is complete only when ``skipped_ok``."""
    path = Path(path)
    if not path.exists():
        return "no bag yet"
    try:
        attrs = read_attrs(path)
    except (OSError, ValueError, KeyError, BagError) as exc:  # unreadable file: rebuild it
        return f"existing bag unreadable ({type(exc).__name__})"
    if attrs.get("schema") != SCHEMA:
        return f"existing bag has schema {attrs.get('schema')!r}"
    changed = slide_changed(attrs.get("slide_fingerprint"), slide, slide_fingerprint)
    if changed:
        return changed
    previous = (attrs.get("tiling") or {}).get("params")
    if previous != json.loads(json.dumps(params, sort_keys=True)):
        changed = sorted(k for k in set(previous or {}) | set(params)
                         if (previous or {}).get(k) != json.loads(json.dumps(params.get(k))))
        return f"parameters changed ({', '.join(changed) or 'all'})"
    if not skipped_ok and attrs.get("bad_tiles"):
        return "the bag dropped patches over bad tiles and --on-bad-tile is fail"
    return None
