"""INPUTS expansion: files, folders, globs, manifests, duplicates and shards."""

from __future__ import annotations

import pytest

from pathology.inputs import InputError, expand_inputs, parse_shard, take_shard


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "s1.svs").write_bytes(b"x")
    (tmp_path / "a" / "s1.tissue.png").write_bytes(b"x")   # a sidecar, not a slide
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "s2.ndpi").write_bytes(b"x")
    (tmp_path / "dicom" / "case7").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "dicom" / "case7" / f"i{i}.dcm").write_bytes(b"x")
    (tmp_path / "p.jpg").write_bytes(b"x")
    return tmp_path


def test_folder_glob_and_file(tree):
    got = expand_inputs([str(tree / "a"), str(tree / "dicom"), str(tree / "*.jpg")])
    assert [s.slide_id for s in got] == ["case7", "p", "s1", "s2"]   # DICOM series = one slide
    assert got[0].path.name == "i0.dcm"


def test_every_problem_reported_at_once(tree):
    with pytest.raises(InputError) as info:
        expand_inputs([str(tree / "missing.svs"), str(tree / "*.nope"), str(tree / "a")])
    msg = str(info.value)
    assert "missing.svs: no such file" in msg and "*.nope: pattern matches no file" in msg


def test_duplicate_ids_are_an_error(tree):
    (tree / "b").mkdir()
    (tree / "b" / "s1.tif").write_bytes(b"x")
    with pytest.raises(InputError, match="slide id 's1' names several files"):
        expand_inputs([str(tree / "a"), str(tree / "b")])


def test_manifest_rows_and_problems(tree):
    m = tree / "m.csv"
    m.write_text("slide_id,slide_path,er\nA,a/s1.svs,1\nB,a/gone.svs,0\nA,a/sub/s2.ndpi,1\n,p.jpg,1\n")
    with pytest.raises(InputError) as info:
        expand_inputs([str(m)])
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert "m.csv row 3: slide_path 'a/gone.svs' not found" in lines[0]
    assert "m.csv row 4: duplicate slide_id 'A' (first on m.csv row 2)" in lines[1]
    assert "m.csv row 5: empty slide_id" in lines[2]
    m.write_text("slide_id,slide_path\nA,a/s1.svs\nB,a/sub/s2.ndpi\n")
    assert [(s.slide_id, s.path.name) for s in expand_inputs([str(m)])] == [("A", "s1.svs"), ("B", "s2.ndpi")]
    m.write_text("slide,path\nA,a/s1.svs\n")
    with pytest.raises(InputError, match="missing required column 'slide_id'") as info:
        expand_inputs([str(m)])
    assert "missing required column 'slide_path'" in str(info.value)


@pytest.mark.parametrize(("delimiter", "bom"), [(",", ""), (";", ""), ("\t", ""), (";", "\ufeff")])
def test_manifests_load_with_any_delimiter_excel_writes(tree, delimiter, bom):
    """The same reader as `mil train`'s: a semicolon CSV (a European Excel) or a tab-separated
    file with a byte-order mark lists the same slides as a comma CSV."""
    m = tree / "m.csv"
    m.write_text(bom + delimiter.join(["slide_id", "slide_path", "er"]) + "\n"
                 + delimiter.join(["A", "a/s1.svs", "1"]) + "\n" + delimiter.join(["B", "a/sub/s2.ndpi", "0"]) + "\n",
                 encoding="utf-8")
    assert [(s.slide_id, s.path.name) for s in expand_inputs([str(m)])] == [("A", "s1.svs"), ("B", "s2.ndpi")]


def test_shards_partition_the_batch(tree):
    slides = expand_inputs([str(tree / "a"), str(tree / "dicom"), str(tree / "p.jpg")])
    parts = [take_shard(slides, parse_shard(f"{i}/3")) for i in range(3)]
    ids = sorted(s.slide_id for part in parts for s in part)
    assert ids == sorted(s.slide_id for s in slides)
    assert all(len(p) >= 1 for p in parts)
    for bad in ("3/3", "-1/2", "1", "a/b"):
        with pytest.raises(InputError, match="--shard takes i/n"):
            parse_shard(bad)
