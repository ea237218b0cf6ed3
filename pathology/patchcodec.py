"""How a bag's ``/patches`` are stored: one HDF5 chunk per patch, written and read as is.

Codecs (``pathology tile --compression``), measured in ``benchmarks/bench_bag_storage.py``:

- ``jpeg`` (the default): each chunk is a baseline JPEG of the patch (libjpeg-turbo through
  simplejpeg, 4:4:4, quality 90 by default), under HDF5's registered JPEG filter id 32019
  with its parameters (quality, width, height, RGB). 5x smaller than raw patches on H&E,
  so a bag is smaller than its slide; a patch decodes in about half a millisecond, which
  the embedding loader does on a thread while the encoder runs. Decoding is strict, as
  for slide tiles (docs/reliability.md): a chunk libjpeg-turbo warns about is corrupt.
- ``none``: raw uint8 patches, lossless; any HDF5 reader reads them.
- ``gzip``: deflate level 1 (libdeflate), lossless, a standard HDF5 filter; only
  1.2-1.35x smaller than raw on stain-normalized H&E, and un-deflating costs more than
  decoding a JPEG.

Plain h5py reads ``none`` and ``gzip`` patches directly; ``jpeg`` patches need
:func:`decode_rows` (or an HDF5 installation with the JPEG filter plugin). This module
depends on nothing else in the project: :mod:`pathology.bag` names the bag in its errors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import h5py
import imagecodecs
import numpy as np
import simplejpeg

__all__ = ["CODECS", "DEFAULT_CODEC", "DEFAULT_QUALITY", "Codec", "CorruptPatchError", "codec_of", "read"]

DEFAULT_CODEC = "jpeg"
DEFAULT_QUALITY = 90          # chosen in benchmarks/bench_bag_storage.py (RESULTS.md)
JPEG_SUBSAMPLING = "444"      # full-resolution colour: the stain is the signal in H&E
JPEG_FILTER = 32019           # HDF5's registered JPEG filter (jpegHDF5, M. Rivers)
GZIP_LEVEL = 1                # libdeflate level 1: standard gzip chunks at ~3x zlib's speed


class CorruptPatchError(ValueError):
    """A stored patch that does not decode; ``row`` is its row in ``/patches``."""

    def __init__(self, row: int, message: str):
        super().__init__(f"stored patch {row} is corrupt ({message})")
        self.row = row


@dataclass(frozen=True)
class Codec:
    """One way of storing patches: the dataset's HDF5 filter and how a chunk is made and read.

    ``encode`` runs on the tiler's worker threads; ``chunk_decoder`` is None when HDF5 itself
    decodes the chunks (``ds[lo:hi]``), else it decodes one chunk's bytes into an (S, S, 3)
    buffer."""

    name: str
    lossless: bool
    filter_options: Callable[[int, int], dict[str, Any]]
    encode: Callable[[np.ndarray, int], bytes | np.ndarray]
    chunk_decoder: Callable[[bytes, np.ndarray], None] | None = None

    def create(self, file: h5py.File, n: int, size: int, quality: int) -> h5py.Dataset:
        """An empty ``/patches`` (n, size, size, 3), one chunk per patch, recording its codec."""
        options = self.filter_options(size, quality) if n else {}
        ds = file.create_dataset("patches", shape=(n, size, size, 3), dtype=np.uint8,
                                 chunks=(1, size, size, 3) if n else None, **options)
        ds.attrs["codec"] = self.name
        if not self.lossless:
            ds.attrs["quality"] = quality
            ds.attrs["subsampling"] = JPEG_SUBSAMPLING
        return ds


def _jpeg_decode(chunk: bytes, out: np.ndarray) -> None:
    try:
        width, height, _, _ = simplejpeg.decode_jpeg_header(chunk)
        if (height, width) != out.shape[:2]:
            raise ValueError(f"{width}x{height} px, the bag's patches are {out.shape[1]}x{out.shape[0]}")
        simplejpeg.decode_jpeg(chunk, colorspace="RGB", buffer=out, strict=True)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - simplejpeg raises plain ValueError/RuntimeError texts
        raise ValueError(str(exc)) from None


CODECS: dict[str, Codec] = {codec.name: codec for codec in (
    Codec("jpeg", lossless=False,
          filter_options=lambda size, q: dict(compression=JPEG_FILTER, compression_opts=(q, size, size, 1),
                                              allow_unknown_filter=True),
          encode=lambda patch, q: simplejpeg.encode_jpeg(patch, quality=q, colorspace="RGB",
                                                         colorsubsampling=JPEG_SUBSAMPLING),
          chunk_decoder=_jpeg_decode),
    Codec("none", lossless=True, filter_options=lambda size, q: {}, encode=lambda patch, q: patch),
    Codec("gzip", lossless=True, filter_options=lambda size, q: dict(compression="gzip", compression_opts=GZIP_LEVEL),
          encode=lambda patch, q: imagecodecs.deflate_encode(patch, level=GZIP_LEVEL)),
)}


def codec_of(ds: h5py.Dataset) -> Codec:
    """The codec of a ``/patches`` dataset: its ``codec`` attribute, or (bags of schema 1,
    which stored raw or gzip patches) its HDF5 filter."""
    name = ds.attrs.get("codec")
    if name is None:
        name = "gzip" if ds.compression == "gzip" else "none"
    name = name.decode() if isinstance(name, bytes) else str(name)
    if name not in CODECS:
        raise ValueError(f"/patches is stored with codec {name!r}, which this version cannot read "
                         f"(it reads {', '.join(CODECS)})")
    return CODECS[name]


def read(ds: h5py.Dataset, rows: slice | np.ndarray) -> np.ndarray:
    """Patches ``rows`` of a ``/patches`` dataset as uint8 (k, S, S, 3), whatever its codec:
    a slice (a batch, read in one go), or integer rows in any order, repeats allowed. Raises
    :class:`CorruptPatchError` naming the first row that does not decode (a damaged chunk, a
    missing one, an image of another size)."""
    if isinstance(rows, slice):
        rows = np.arange(*rows.indices(len(ds)))
    rows = np.asarray(rows, np.int64).reshape(-1)
    decode = codec_of(ds).chunk_decoder
    if decode is None:
        return _read_through_hdf5(ds, rows)
    out = np.empty((len(rows), *ds.shape[1:]), np.uint8)
    for i, row in enumerate(rows):
        try:
            _, chunk = ds.id.read_direct_chunk((int(row), 0, 0, 0))
        except Exception as exc:  # noqa: BLE001 - HDF5 says why in its own words
            raise CorruptPatchError(int(row), f"its chunk cannot be read: {_one_line(exc)}") from None
        try:
            decode(chunk, out[i])
        except ValueError as exc:
            raise CorruptPatchError(int(row), str(exc)) from None
    return out


def _read_through_hdf5(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Rows of a dataset HDF5 decodes itself: a run of consecutive rows in one read, other
    rows one at a time (h5py's fancy indexing is far slower, ``pathology.h5rows``). A chunk
    that fails to decode is found row by row and named."""
    try:
        if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
            return ds[int(rows[0]):int(rows[0]) + len(rows)]
        out = np.empty((len(rows), *ds.shape[1:]), ds.dtype)
        for i, row in enumerate(rows):
            out[i] = ds[int(row)]
        return out
    except OSError:
        for row in rows:
            try:
                ds[int(row)]
            except OSError as exc:
                raise CorruptPatchError(int(row), _one_line(exc)) from None
        raise


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
