"""Atomic publication: the temporary name, its removal on failure, and normal permissions."""

from __future__ import annotations

import json
import os
import threading

import pytest

from pathology.hashing import file_sha256, slide_seed
from pathology.publish import FILE_MODE, partial_path, publish_csv, publish_json, publishing


def test_the_temporary_name_is_hidden_beside_the_target_and_unique_per_thread(tmp_path):
    target = tmp_path / "slide.h5"
    name = partial_path(target)
    assert name.parent == tmp_path and name.name.startswith(".slide.h5.") and name.name.endswith(".partial")
    assert f".{os.getpid()}." in name.name
    other: list = []
    thread = threading.Thread(target=lambda: other.append(partial_path(target)))
    thread.start()
    thread.join()
    assert other[0] != name


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.csv"
    publish_csv(target, ["slide_id", "score"], [["a", 1]])
    with pytest.raises(RuntimeError), publishing(target) as tmp:
        tmp.write_text("half a file")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == b"slide_id,score\r\na,1\r\n"  # the csv module's line ends
    assert os.listdir(tmp_path) == ["results.csv"]


def test_published_files_get_normal_permissions_even_from_strict_writers(tmp_path):
    target = tmp_path / "model.safetensors"
    with publishing(target) as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)  # as safetensors writes
        os.close(fd)
    assert target.stat().st_mode & 0o777 == FILE_MODE
    assert FILE_MODE & 0o044  # group and others may read (with the usual umask 022)


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError, match="Out of range float"):
        publish_json(tmp_path / "m.json", {"auc": float("nan")})
    assert not list(tmp_path.iterdir())
    publish_json(tmp_path / "m.json", {"auc": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auc": 0.5}


def test_hashes_and_seeds_are_stable(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    # SHA-256("abc") from FIPS 180-2, appendix B.1
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert slide_seed("TCGA-A1") == slide_seed("TCGA-A1") != slide_seed("TCGA-A2")
    assert slide_seed("TCGA-A1", seed=1) != slide_seed("TCGA-A1")
    assert 0 <= slide_seed("x") < 2**64
