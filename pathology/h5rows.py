"""Chosen rows of an HDF5 dataset, read a block of rows at a time.

h5py's fancy indexing (``ds[[3, 17, 250]]``) is 25-50x slower than reading the chunks that
hold the rows and picking them out in NumPy (``benchmarks/bench_h5rows.py``): 12 montage
patches from a bag, 148 ms against 3 ms; 2,048 of 5,000 feature rows, 64 ms against 2.4 ms.
``tests/test_h5rows.py`` checks the results are the same.
"""

from __future__ import annotations

import h5py
import numpy as np

BLOCK_BYTES = 4 << 20  # rows per read for an unchunked dataset: about this many bytes


def read_rows(ds: h5py.Dataset, rows: np.ndarray, lead: bool = False) -> np.ndarray:
    """``ds[rows]`` for integer ``rows`` in any order, repeats allowed; with ``lead``,
    ``ds[0, rows]`` of a (1, N, ...) dataset."""
    rows = np.asarray(rows, np.int64).reshape(-1)
    n, row_shape = ds.shape[lead], ds.shape[lead + 1:]
    if len(rows) and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"{ds.name}: rows {rows.min()}-{rows.max()} are outside 0-{n - 1}")
    unique, inverse = np.unique(rows, return_inverse=True)
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * ds.dtype.itemsize)
    block = ds.chunks[lead] if ds.chunks else max(1, BLOCK_BYTES // row_bytes)
    out = np.empty((len(unique), *row_shape), ds.dtype)
    blocks = unique // block
    for group in np.split(np.arange(len(unique)), np.flatnonzero(np.diff(blocks)) + 1):
        if not len(group):
            continue
        lo = int(blocks[group[0]]) * block
        hi = min(lo + block, n)
        data = ds[0, lo:hi] if lead else ds[lo:hi]
        out[group] = data[unique[group] - lo]
    return out[inverse]
