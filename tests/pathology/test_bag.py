"""Bag files: schema, atomic writes, readable gzip chunks, rerun decisions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pathology.bag import SCHEMA, BagWriter, completed_with, fingerprint, read_attrs


def make_bag(path, n=5, size=32, compression="gzip", params=None, fp="sampled-sha256/2 size=1 mtime_ns=1 samples=0",
             store=True):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    w = BagWriter(path, n, size, store_patches=store, compression=compression)
    w.write_geometry(np.arange(n * 2).reshape(n, 2) * 10, np.linspace(0.5, 1, n), (64.0, 64.0))
    w.write_overview(np.zeros((8, 9, 3), np.uint8), np.ones((8, 9), bool), (16.0, 16.0))
    w.write_encoded(w.encode(patches[:3]))
    w.write_encoded(w.encode(patches[3:]))
    w.commit({"slide_id": "s1", "slide_fingerprint": fp, "mpp_level0": 0.25,
              "tiling": {"params": params or {"a": 1}}, "stain": {"method": "none"}})
    return patches


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_bag_round_trip_with_standard_hdf5_filters(tmp_path, compression):
    path = tmp_path / "s1.h5"
    patches = make_bag(path, compression=compression)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["patches"][:], patches)  # plain h5py decodes our direct chunks
        assert f["patches"].compression == (None if compression == "none" else "gzip")
        assert f["patches"].chunks == (1, 32, 32, 3)
        assert f["coords"].dtype == np.int64 and f["coords"].shape == (5, 2)
        assert f["coords"].attrs["patch_size_level0"] == 64
        assert f["tissue_fraction"].dtype == np.float32
        assert f["thumbnail"].attrs["downsample"].tolist() == [16.0, 16.0]
    attrs = read_attrs(path)
    assert attrs["schema"] == SCHEMA and attrs["slide_id"] == "s1"
    assert attrs["tiling"] == {"params": {"a": 1}} and attrs["stain"] == {"method": "none"}
    assert attrs["software_version"] and attrs["created"]
    assert not list(tmp_path.glob("*.partial"))


def test_coords_only_bag(tmp_path):
    make_bag(tmp_path / "s.h5", store=False)
    with h5py.File(tmp_path / "s.h5") as f:
        assert "patches" not in f and f["coords"].shape == (5, 2)


def test_abort_leaves_the_existing_bag_untouched(tmp_path):
    path = tmp_path / "s1.h5"
    patches = make_bag(path)
    before = path.read_bytes()
    w = BagWriter(path, 3, 32)
    w.write_encoded(w.encode(np.zeros((3, 32, 32, 3), np.uint8)))
    assert path.read_bytes() == before  # writing goes to a temporary file
    w.abort()
    assert path.read_bytes() == before and not list(tmp_path.glob("*.partial"))
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["patches"][:], patches)


def test_rerun_decision(tmp_path):
    slide = tmp_path / "s1.svs"
    slide.write_bytes(b"slide one")
    fp = fingerprint(slide)
    path = tmp_path / "s1.h5"
    assert completed_with(path, slide, fp, {"a": 1}) == "no bag yet"
    make_bag(path, params={"a": 1, "b": [1, 2]}, fp=fp)
    assert completed_with(path, slide, fp, {"a": 1, "b": [1, 2]}) is None
    assert completed_with(path, slide, fp, {"a": 1, "b": (1, 2)}) is None      # JSON-equal
    assert completed_with(path, slide, fp, {"a": 2, "b": [1, 2]}) == "parameters changed (a)"
    slide.write_bytes(b"slide two")
    assert "changed" in completed_with(path, slide, fingerprint(slide), {"a": 1, "b": [1, 2]})
    path.write_bytes(b"garbage")
    assert "unreadable" in completed_with(path, slide, fp, {"a": 1})
