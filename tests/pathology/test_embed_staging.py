"""The atomic rewrite behind `pathology embed`: background copy, swap, deferred free."""

from __future__ import annotations

import os

import pytest

from pathology.embed import staging
from pathology.embed.staging import StagedCopy, kernel_copy
from pathology.errors import StorageError


@pytest.fixture
def bag(tmp_path):
    path = tmp_path / "slide.h5"
    path.write_bytes(os.urandom(3 << 20) + b"original")
    return path


def test_commit_swaps_in_the_edited_copy_and_frees_the_old_file(bag):
    before = bag.read_bytes()
    held = open(bag, "rb")  # noqa: SIM115 - a reader that opened the bag before the swap keeps reading the old file
    staged = StagedCopy(bag)
    tmp = staged.ready()
    assert tmp.read_bytes() == before and bag.read_bytes() == before
    with open(tmp, "ab") as f:
        f.write(b"+features")
    staged.commit().join()
    assert bag.read_bytes() == before + b"+features"
    assert held.read() == before
    held.close()
    assert sorted(p.name for p in bag.parent.iterdir()) == ["slide.h5"]


def test_discard_leaves_the_file_as_it_was(bag):
    before = bag.read_bytes()
    staged = StagedCopy(bag)
    staged.discard()
    assert bag.read_bytes() == before and sorted(p.name for p in bag.parent.iterdir()) == ["slide.h5"]


def test_a_failed_copy_is_raised_by_ready(bag, monkeypatch):
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(staging, "kernel_copy", broken)
    staged = StagedCopy(bag)
    with pytest.raises(StorageError, match=f"cannot write {bag}: the disk is full"):  # the bag, not its copy
        staged.ready()
    staged.discard()


def test_copy_falls_back_when_the_kernel_cannot_copy_between_files(bag, tmp_path, monkeypatch):
    def unsupported(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    kernel_copy(bag, tmp_path / "copy.h5")
    assert (tmp_path / "copy.h5").read_bytes() == bag.read_bytes()


def test_copy_works_where_python_has_no_copy_file_range(bag, tmp_path, monkeypatch):
    monkeypatch.delattr(os, "copy_file_range", raising=False)  # macOS
    kernel_copy(bag, tmp_path / "copy.h5")
    assert (tmp_path / "copy.h5").read_bytes() == bag.read_bytes()


def test_commit_without_hard_links_still_replaces(bag, monkeypatch):
    def no_links(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    staged = StagedCopy(bag)
    with open(staged.ready(), "ab") as f:
        f.write(b"+features")
    assert staged.commit() is None
    assert bag.read_bytes().endswith(b"original+features")
    assert sorted(p.name for p in bag.parent.iterdir()) == ["slide.h5"]
