"""Feature bags: our layout, CLAM/TRIDENT .h5, .pt tensors, degenerate bags, the Dataset."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from mil.data import BagDataset, BagError, available_features, find_bag, probe_bag, read_features
from mil.manifest import load_manifest
from tests.factories import write_bag, write_clam


def feats(n: int, d: int = 8, seed: int = 0, dtype=np.float16) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def test_our_bag_reads_float32_features_and_coords(tmp_path):
    x = feats(5)
    coords = np.stack([np.arange(5) * 256, np.arange(5) * 512], 1)
    bag = read_features(write_bag(tmp_path / "s1.h5", {"uni": x}, coords=coords))
    assert bag.name == "uni" and bag.features.dtype == np.float32 and bag.features.shape == (5, 8)
    np.testing.assert_array_equal(bag.features, x.astype(np.float32))
    assert bag.coords.dtype == np.int64 and bag.coords[3].tolist() == [768, 1536]


def test_feature_set_choice(tmp_path):
    path = write_bag(tmp_path / "s1.h5", {"uni": feats(4, 8), "resnet50": feats(4, 16, dtype=np.float32)},
                     dtype=None)
    assert available_features(path) == ["resnet50", "uni"]
    assert read_features(path, "resnet50").features.shape == (4, 16)
    with pytest.raises(BagError, match=r"s1\.h5: the bag holds several feature sets \(resnet50, uni\); "
                                        r"choose one with --features"):
        read_features(path)
    with pytest.raises(BagError, match=r"s1\.h5: no feature set 'ctranspath' \(has: resnet50, uni\); "
                                        r"run `pathology embed`"):
        read_features(path, "ctranspath")
    empty = write_bag(tmp_path / "s2.h5", {}, coords=np.zeros((3, 2)))
    assert available_features(empty) == []
    with pytest.raises(BagError, match=r"s2\.h5: the bag holds no features yet; run `pathology embed`"):
        read_features(empty)


def test_clam_and_trident_files(tmp_path):
    x = feats(6, 4, dtype=np.float32)
    coords = np.arange(12).reshape(6, 2) * 100
    clam = write_clam(tmp_path / "clam.h5", x, coords)
    trident = write_clam(tmp_path / "trident.h5", x[None], coords)
    for path in (clam, trident):
        assert available_features(path) == ["features"]
        bag = read_features(path)
        assert bag.name == "features" and bag.features.shape == (6, 4)
        np.testing.assert_array_equal(bag.features, x)
        np.testing.assert_array_equal(bag.coords, coords)
    assert read_features(clam, "features").features.shape == (6, 4)
    with pytest.raises(BagError, match="no feature set 'uni' \\(has: features\\)"):
        read_features(clam, "uni")
    stamp = write_clam(tmp_path / "stamp.h5", x, coords.astype(np.float64) + 0.4, name="feats")
    assert read_features(stamp).name == "feats" and read_features(stamp).coords.dtype == np.int64


def test_pt_tensor(tmp_path):
    x = torch.randn(7, 5)
    torch.save(x, tmp_path / "s.pt")
    bag = read_features(tmp_path / "s.pt")
    assert bag.name == "pt" and bag.coords is None and available_features(tmp_path / "s.pt") == ["pt"]
    np.testing.assert_array_equal(bag.features, x.numpy())
    torch.save({"features": x}, tmp_path / "d.pt")
    with pytest.raises(BagError, match=r"d\.pt: holds a dict, expected one \(N, D\) tensor"):
        read_features(tmp_path / "d.pt")


class _Exploit:
    """Unpickling this would run code: it must never happen."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_in_pt_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_Exploit(marker), tmp_path / "evil.pt")
    with pytest.raises(BagError, match=r"evil\.pt: refused to load: it holds pickled objects other than tensors "
                                       r"\(unsupported GLOBAL posix.system\); nothing in it was run") as info:
        read_features(tmp_path / "evil.pt")
    assert not marker.exists()
    assert "weights_only" not in str(info.value)  # never the advice to load it unsafely


@pytest.mark.parametrize("make, message", [
    (lambda p: write_bag(p, {"uni": np.zeros((0, 8), np.float16)}), "empty bag \\(0 instances\\)"),
    (lambda p: write_clam(p, np.zeros((1, 0, 8), np.float32)), "empty bag \\(0 instances\\)"),
    (lambda p: write_bag(p, {"uni": np.where(np.arange(40).reshape(5, 8) == 19, np.nan, 1).astype(np.float16)}),
     "1 of 5 instances have NaN or infinite features \\(first: instance 2\\)"),
    (lambda p: write_clam(p, np.full((3, 2), np.inf, np.float32)), "3 of 3 instances have NaN or infinite"),
    (lambda p: write_clam(p, np.ones((3, 2, 2), np.float32)), "features have shape \\(3, 2, 2\\)"),
    (lambda p: write_clam(p, np.ones((3, 2), np.float32), np.zeros((4, 2))), "/coords has shape \\(4, 2\\)"),
    (lambda p: p.write_bytes(b"not hdf5"), "not a readable HDF5 file"),
    (lambda p: write_clam(p, np.ones((3, 2)), name="embeddings"), "not a feature file"),
    (lambda p: None, "no such bag file"),
])
def test_degenerate_bags_are_one_clear_error(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(BagError, match=message) as info:
        read_features(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_empty_pt_is_refused(tmp_path):
    torch.save(torch.zeros(0, 4), tmp_path / "e.pt")
    with pytest.raises(BagError, match="empty bag"):
        read_features(tmp_path / "e.pt")


def test_find_bag_order_and_clam_folders(tmp_path):
    torch.save(torch.ones(2, 2), tmp_path / "a.pt")
    assert find_bag(tmp_path, "a") == tmp_path / "a.pt"
    write_clam(tmp_path / "a.h5", np.ones((2, 2)))
    assert find_bag(tmp_path, "a") == tmp_path / "a.h5"          # .h5 before .pt
    (tmp_path / "pt_files").mkdir()
    torch.save(torch.ones(2, 2), tmp_path / "pt_files" / "b.pt")
    assert find_bag(tmp_path, "b") == tmp_path / "pt_files" / "b.pt"
    assert find_bag(tmp_path, "c") is None


@pytest.fixture
def cohort(tmp_path):
    """Three slides: our bag (12 instances), a CLAM file (3), a .pt tensor (30); D = 8."""
    bags = tmp_path / "bags"
    bags.mkdir()
    write_bag(bags / "s1.h5", {"uni": feats(12, seed=1)})
    write_clam(bags / "s2.h5", feats(3, seed=2, dtype=np.float32), np.zeros((3, 2), np.int64))
    torch.save(torch.from_numpy(feats(30, seed=3, dtype=np.float32)), bags / "s3.pt")
    (tmp_path / "m.csv").write_text("slide_id,patient_id,er,os_time,os_event\n"
                                    "s1,p1,pos,10,1\ns2,p2,,5.5,0\ns3,p3,neg,,\n")
    return load_manifest(tmp_path / "m.csv", targets=["er"], survival=("os_time", "os_event"), bags_dir=bags)


def test_dataset_items(cohort):
    ds = BagDataset(cohort)
    assert len(ds) == 3 and ds.dim == 8
    item = ds[0]
    assert item["x"].dtype == torch.float32 and item["x"].shape == (12, 8)
    assert item["row"] == 0 and item["slide_id"] == "s1" and item["index"].tolist() == list(range(12))
    np.testing.assert_array_equal(item["x"].numpy(), feats(12, seed=1).astype(np.float32))
    assert item["labels"]["er"].item() == 1.0 and item["labels"]["er"].shape == ()
    assert item["labels"]["survival"].tolist() == [10.0, 1.0]
    assert torch.isnan(ds[1]["labels"]["er"]) and ds[1]["labels"]["survival"].tolist() == [5.5, 0.0]
    assert torch.isnan(ds[2]["labels"]["survival"]).all() and ds[2]["labels"]["er"].item() == 0.0
    sub = BagDataset(cohort, rows=[2, 0])
    assert [sub[i]["row"] for i in range(2)] == [2, 0] and sub[0]["x"].shape == (30, 8)


def test_dataset_subsampling_and_memory(cohort):
    lazy = BagDataset(cohort, max_instances=10, seed=3)
    memory = BagDataset(cohort, max_instances=10, seed=3, in_memory=True)
    for ds in (lazy, memory):
        items = [ds[i] for i in range(3)]
        assert [len(it["x"]) for it in items] == [10, 3, 10]      # small bags are kept whole
        for it, full in zip(items, (feats(12, seed=1), feats(3, 8, 2, np.float32), feats(30, 8, 3, np.float32))):
            idx = it["index"].numpy()
            assert np.all(np.diff(idx) > 0)
            np.testing.assert_array_equal(it["x"].numpy(), full.astype(np.float32)[idx])
    for i in range(3):
        assert torch.equal(lazy[i]["index"], memory[i]["index"]) and torch.equal(lazy[i]["x"], memory[i]["x"])


def test_dataset_checks_bags_up_front(tmp_path, cohort):
    write_bag(tmp_path / "bags" / "s1.h5", {"uni": feats(12, d=16)})
    with pytest.raises(BagError, match=r"s2\.h5: features have dimension 8, but .*s1\.h5 has 16"):
        BagDataset(cohort)
    unlocated = load_manifest(tmp_path / "m.csv", targets=["er"])
    with pytest.raises(BagError, match="no bag located for 3 slide\\(s\\) \\(first: s1\\)"):
        BagDataset(unlocated)


def test_nan_bag_fails_when_read(tmp_path, cohort):
    x = feats(12, seed=1)
    x[4, 2] = np.nan
    write_bag(tmp_path / "bags" / "s1.h5", {"uni": x})
    ds = BagDataset(cohort)        # headers are fine
    with pytest.raises(BagError, match=r"s1\.h5: 1 of 12 instances have NaN"):
        ds[0]
    with pytest.raises(BagError, match="NaN"):
        BagDataset(cohort, in_memory=True)


def test_large_bag_loads_and_subsamples_deterministically(tmp_path, monkeypatch):
    n, d = 100_000, 32
    x = np.zeros((n, d), np.float16)
    x[:, 0] = np.arange(n) % 2048      # the instance index, encoded exactly in float16
    x[:, 1] = np.arange(n) // 2048
    write_bag(tmp_path / "big.h5", {"uni": x})        # chunks of 1,024 rows, as `pathology embed` writes them
    (tmp_path / "m.csv").write_text("slide_id,er\nbig,1\n")
    cohort = load_manifest(tmp_path / "m.csv", targets=["er"], bags_dir=tmp_path)
    assert probe_bag(tmp_path / "big.h5") == (n, d)

    reads = []                          # rows returned by each read of the feature dataset
    real = h5py.Dataset.__getitem__

    def counted(self, key):
        out = real(self, key)
        if self.name == "/features/uni":
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    full = read_features(tmp_path / "big.h5")
    assert full.features.shape == (n, d) and full.features.dtype == np.float32
    assert full.features[99_999, :2].tolist() == [99_999 % 2048, 99_999 // 2048]
    assert reads == [n]

    def chunk_reads(index):
        """A sample reads the 1,024-row chunks that hold its rows, one at a time, each once."""
        return [min(1024, n - 1024 * int(c)) for c in np.unique(index // 1024)]

    reads.clear()
    ds = BagDataset(cohort, max_instances=4096, seed=7)
    a = ds[0]
    idx = a["index"].numpy()
    assert a["x"].shape == (4096, d) and len(np.unique(idx)) == 4096 and np.all(np.diff(idx) > 0)
    assert reads == chunk_reads(idx)                                   # never the whole bag at once
    decoded = a["x"][:, 0].numpy() + 2048 * a["x"][:, 1].numpy()
    np.testing.assert_array_equal(decoded, idx)                      # x rows are the indexed instances
    assert torch.equal(ds[0]["index"], a["index"])                    # same seed + epoch -> same subset
    assert torch.equal(BagDataset(cohort, max_instances=4096, seed=7)[0]["index"], a["index"])
    ds.set_epoch(1)
    b = ds[0]["index"]
    assert not torch.equal(b, a["index"])                              # next epoch -> another subset
    ds.set_epoch(0)
    assert torch.equal(ds[0]["index"], a["index"])
    assert not torch.equal(BagDataset(cohort, max_instances=4096, seed=8)[0]["index"], a["index"])

    reads.clear()
    small = BagDataset(cohort, max_instances=16, seed=7)[0]["index"].numpy()
    assert reads == chunk_reads(small) and sum(reads) <= 16 * 1024   # a small sample reads a sixth of the bag at most
