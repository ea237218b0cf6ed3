"""read_rows gives what NumPy (and h5py's slow fancy indexing) gives, for every layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pathology.h5rows import read_rows

ROWS = [[], [0], [7, 3, 3, 0, 99], list(range(100)), [99, 98, 50, 51, 52, 1]]


@pytest.mark.parametrize("layout", [dict(chunks=(1, 4, 3)), dict(chunks=(16, 4, 3)), dict(chunks=(7, 2, 3)),
                                    dict(chunks=None), dict(chunks=(16, 4, 3), compression="gzip")])
@pytest.mark.parametrize("rows", ROWS)
def test_rows_match_numpy(tmp_path, layout, rows):
    data = np.random.default_rng(0).integers(0, 255, (100, 4, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("x", data=data, **layout)
        f.create_dataset("lead", data=data[None], **({**layout, "chunks": (1, *layout["chunks"])}
                                                     if layout.get("chunks") else layout))
    with h5py.File(tmp_path / "a.h5") as f:
        np.testing.assert_array_equal(read_rows(f["x"], rows), data[rows])
        np.testing.assert_array_equal(read_rows(f["lead"], rows, lead=True), data[rows])
        if rows and rows == sorted(set(rows)):
            np.testing.assert_array_equal(read_rows(f["x"], rows), f["x"][rows])


def test_rows_outside_the_dataset_are_refused(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["x"] = np.zeros((5, 2))
        with pytest.raises(IndexError, match="outside 0-4"):
            read_rows(f["x"], [1, 5])
