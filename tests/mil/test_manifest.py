"""Cohort manifests: parsing, every problem at once with its row, STAMP tables, the shipped examples."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mil.manifest import ManifestError, Task, load_manifest, parse_label
from mil.stamp import slide_id_from_filename
from pathology.errors import InputError
from tests.factories import write_bag

EXAMPLES = Path(__file__).resolve().parents[2] / "data_manifests"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def bag(folder: Path, slide_id: str, encoders=("uni",)) -> Path:
    return write_bag(folder / f"{slide_id}.h5", {name: np.ones((2, 4)) for name in encoders})


@pytest.mark.parametrize("cell, value", [
    ("1", 1.0), ("0", 0.0), ("1.0", 1.0), ("0.0", 0.0), (" TRUE ", 1.0), ("false", 0.0),
    ("Positive", 1.0), ("NEGATIVE", 0.0), ("pos", 1.0), ("Neg", 0.0), ("yes", 1.0), ("No", 0.0),
    ("", math.nan), ("NA", math.nan), ("n/a", math.nan), ("NaN", math.nan), ("unknown", math.nan),
    ("2", None), ("1+", None), ("maybe", None), ("0.5", None),
])
def test_parse_label(cell, value):
    got = parse_label(cell)
    assert (got is None and value is None) or (math.isnan(value) and math.isnan(got)) or got == value


def test_manifest_to_cohort(tmp_path):
    m = write(tmp_path / "m.csv",
              "slide_id,patient_id,er,her2,os_time,os_event,fold,split\n"
              "a,p1,pos,0,12.5,1,0,train\n"
              "b,p1,positive,,12.5,1,0,Train\n"
              "\n"                                   # blank lines are skipped
              "c,p2,negative,1,30,0,1,test\n"
              "d,p3,,no,,,,\n")
    c = load_manifest(m, targets=["er", "her2"], survival=("os_time", "os_event"))
    assert c.tasks == [Task("er", "binary", ("er",)), Task("her2", "binary", ("her2",)),
                       Task("survival", "survival", ("os_time", "os_event"))]
    t = c.table
    assert list(t.columns) == ["slide_id", "patient_id", "bag_path", "fold", "split", "er", "her2",
                               "survival_time", "survival_event"]
    assert t.index.tolist() == [0, 1, 2, 3] and t["bag_path"].tolist() == [""] * 4
    assert str(t["fold"].dtype) == "Int64" and t["fold"].tolist()[:3] == [0, 0, 1] and t["fold"].isna()[3]
    assert t["split"].tolist()[:3] == ["train", "train", "test"] and pd.isna(t["split"][3])
    np.testing.assert_array_equal(c.labels("er"), [1, 1, 0, np.nan])
    np.testing.assert_array_equal(c.labels("her2"), [0, np.nan, 1, 0])
    np.testing.assert_array_equal(c.labels("survival"), [[12.5, 1], [12.5, 1], [30, 0], [np.nan, np.nan]])
    assert c.patients().tolist() == ["p1", "p1", "p2", "p3"] and c.source == m
    with pytest.raises(KeyError, match="no task 'pr' \\(tasks: er, her2, survival\\)"):
        c.labels("pr")


def test_every_problem_reported_at_once_with_rows(tmp_path):
    bags = tmp_path / "bags"
    for sid in ("a", "b", "c", "e", "f"):
        bag(bags, sid)
    m = write(tmp_path / "bad.csv",
              "slide_id,patient_id,er,os_time,os_event,fold\n"
              "a,p1,pos,10,1,0\n"          # row 2: fine
              "b,p1,neg,10,1,0\n"          # row 3: conflicts with row 2 on er
              "a,p2,pos,5,0,1\n"           # row 4: duplicate slide_id
              "c,p3,maybe,-3,2,1\n"        # row 5: bad label, negative time, event not 0/1
              "d,p4,1,7,0,x\n"             # row 6: no bag, fold not an integer
              "e,p5,0,7,,1\n"              # row 7: time without event
              "f,p6,0,7,1,1.5\n")          # row 8: fold not an integer
    with pytest.raises(ManifestError) as info:
        load_manifest(m, targets=["er", "pr"], survival=("os_time", "os_event"), bags_dir=bags)
    problems = info.value.problems
    expected = [
        "bad.csv row 1 (header): missing required column 'pr'",
        "bad.csv row 4: duplicate slide_id 'a' (first on bad.csv row 2)",
        "bad.csv row 6: no bag for slide 'd' in",
        "bad.csv row 6, column 'fold': fold 'x' is not a non-negative integer",
        "bad.csv row 8, column 'fold': fold '1.5' is not a non-negative integer",
        "bad.csv row 5, column 'er': unparseable label 'maybe'",
        "bad.csv row 2, column 'er': patient 'p1' has conflicting labels: 1 on bad.csv row 2; 0 on bad.csv row 3",
        "bad.csv row 5, column 'os_time': survival time '-3' is not a non-negative number",
        "bad.csv row 5, column 'os_event': event '2' is not 1 (event) or 0 (censored)",
        "bad.csv row 7, column 'os_event': empty while 'os_time' is given",
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for want, got in zip(expected, problems):
        assert got.startswith(want), f"{got!r} does not start with {want!r}"
    msg = str(info.value)
    assert msg.splitlines()[0] == f"{m}: 10 problem(s) in the manifest, nothing was started"
    assert all(f"  - {p}" in msg for p in problems)


def test_patient_split_conflicts_and_bad_split(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,patient_id,fold,split\na,p1,0,train\nb,p1,1,test\nc,p2,,holdout\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    assert info.value.problems == [
        "m.csv row 2, column 'fold': patient 'p1' has conflicting folds (a patient must stay on one side of "
        "every split): 0 on m.csv row 2; 1 on m.csv row 3",
        "m.csv row 4, column 'split': split 'holdout' is not one of train, val, test",
        "m.csv row 2, column 'split': patient 'p1' has conflicting splits (a patient must stay on one side of "
        "every split): train on m.csv row 2; test on m.csv row 3",
    ]


def test_split_names(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,split\na,TRAIN\nb,Validation\nc,valid\nd, val \ne,test\nf,\n")
    assert load_manifest(m).table["split"].fillna("-").tolist() == ["train", "val", "val", "val", "test", "-"]


def test_header_and_cell_problems(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,ER,er\n,1,1\nb,1,0,extra\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(m, targets=["Er"])
    assert info.value.problems == [
        "m.csv row 3: 4 cells but the header has 3 columns",
        "m.csv row 1 (header): missing required column 'Er' (did you mean 'ER'?)",
        "m.csv row 2, column 'slide_id': empty slide_id",
    ]
    write(m, "slide_id,er,er\na,1,1\n")
    with pytest.raises(ManifestError, match="m.csv row 1 \\(header\\): duplicate column 'er'"):
        load_manifest(m)
    write(m, "slide_id\n")
    with pytest.raises(ManifestError, match="m.csv: no slides"):
        load_manifest(m)


def test_patient_id_defaults_to_slide_id_with_a_warning(tmp_path, caplog):
    m = write(tmp_path / "m.csv", "slide_id;tumor\ns1;1\ns2;0\n")     # semicolon CSV (European Excel)
    with caplog.at_level(logging.WARNING, logger="mil.manifest"):
        c = load_manifest(m, targets=["tumor"])
    assert c.patients().tolist() == ["s1", "s2"]
    assert "no patient_id column" in caplog.text


def test_bags_are_located_and_checked(tmp_path):
    bags = tmp_path / "bags"
    bag(bags, "a")
    bag(bags, "b", encoders=("uni", "resnet50"))
    (bags / "h5_files").mkdir()
    bag(bags / "h5_files", "c")
    m = write(tmp_path / "m.csv", "slide_id,er\na,1\nb,0\nc,1\n")
    c = load_manifest(m, targets=["er"], bags_dir=bags, features="uni")
    assert c.table["bag_path"].tolist() == [str((bags / p).resolve()) for p in ("a.h5", "b.h5", "h5_files/c.h5")]
    with pytest.raises(ManifestError) as info:
        load_manifest(m, targets=["er"], bags_dir=bags)
    assert info.value.problems == [f"m.csv row 3: {bags / 'b.h5'}: the bag holds several feature sets "
                                   f"(resnet50, uni); choose one with --features"]
    with pytest.raises(ManifestError, match="bags folder not found"):
        load_manifest(m, bags_dir=tmp_path / "nope")


def test_argument_errors(tmp_path):
    m = write(tmp_path / "m.csv", "slide_id,fold\na,0\n")
    with pytest.raises(InputError, match="'fold' clash"):
        load_manifest(m, targets=["fold"])
    with pytest.raises(InputError, match="named twice"):
        load_manifest(m, targets=["er", "er"])
    with pytest.raises(ManifestError, match="spreadsheets are not read; save the sheet as CSV"):
        load_manifest(tmp_path / "m.xlsx")
    with pytest.raises(ManifestError, match="no such file"):
        load_manifest(tmp_path / "missing.csv")
    (tmp_path / "latin1.csv").write_bytes("slide_id,er\nJosé,1\n".encode("latin-1"))
    with pytest.raises(ManifestError, match="latin1.csv: not UTF-8 text; save it as CSV UTF-8"):
        load_manifest(tmp_path / "latin1.csv")


@pytest.mark.parametrize("filename, slide_id", [
    ("P001-DX1.h5", "P001-DX1"), ("TCGA-A1-A0SB-01Z-00-DX1.B34C68B6.svs", "TCGA-A1-A0SB-01Z-00-DX1.B34C68B6"),
    ("feats/P2.pt", "P2"), ("P3.v2", "P3.v2"), ("P4", "P4"),
])
def test_stamp_slide_ids(filename, slide_id):
    assert slide_id_from_filename(filename) == slide_id


def test_stamp_tables(tmp_path, caplog):
    clini = write(tmp_path / "clini.csv", "PATIENT,ER,OS,EVENT\nP1,1,10,1\nP2,0,20,0\nP3,1,5,1\n")
    slides = write(tmp_path / "slide.csv", "PATIENT,FILENAME,fold\nP1,s1.h5,0\nP1,s2.h5,0\nP2,s3.h5,1\nP9,s4.h5,1\n")
    with caplog.at_level(logging.WARNING, logger="mil.stamp"):
        c = load_manifest(slides, clinical=clini, targets=["ER"], survival=("OS", "EVENT"))
    assert "1 patient(s) of the slide table are not in the clinical table" in caplog.text
    assert c.table["slide_id"].tolist() == ["s1", "s2", "s3", "s4"]
    assert c.patients().tolist() == ["P1", "P1", "P2", "P9"] and c.table["fold"].tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(c.labels("ER"), [1, 1, 0, np.nan])
    np.testing.assert_array_equal(c.labels("survival")[:, 0], [10, 10, 20, np.nan])

    write(clini, "PATIENT,ER\nP1,1\nP2,maybe\nP1,0\n")
    write(slides, "PATIENT,FILENAME\nP1,s1.h5\nP2,s1.pt\n,s3.h5\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(slides, clinical=clini, targets=["ER", "PR"])
    assert info.value.problems == [
        "clini.csv row 1 (header): missing required column 'PR' (has: PATIENT, ER)",
        "clini.csv row 4, column 'PATIENT': duplicate PATIENT 'P1' (first on clini.csv row 2); "
        "the clinical table has one row per patient",
        "slide.csv row 4, column 'PATIENT': empty PATIENT",
        "slide.csv row 3: duplicate slide_id 's1' (first on slide.csv row 2)",
        "clini.csv row 3, column 'ER': unparseable label 'maybe' "
        "(use 1/0, true/false, positive/negative, pos/neg, yes/no; empty = unknown)",
    ]


def test_shipped_examples_are_valid():
    c = load_manifest(EXAMPLES / "template.csv", targets=["tumor", "er", "pr", "her2"],
                      survival=("os_time", "os_event"))
    assert len(c.table) >= 3 and np.isnan(c.labels("er")).any()                  # an unknown label
    surv = c.labels("survival")
    assert (surv[:, 1] == 0).any()                                                 # a censored row
    k = load_manifest(EXAMPLES / "template.csv", targets=["grade", "ki67"], covariates=["age", "stage"])
    assert [(t.kind, t.classes) for t in k.tasks] == [("multiclass", ("1", "2", "3")), ("regression", ())]
    assert [(v.name, v.kind) for v in k.covariates] == [("age", "numeric"), ("stage", "categorical")]
    assert np.isnan(k.covariate_values(k.covariates[0])).sum() == 1               # a missing covariate
    s = load_manifest(EXAMPLES / "stamp" / "slide.csv", clinical=EXAMPLES / "stamp" / "clini.csv",
                      targets=["ER", "HER2"], survival=("OS_MONTHS", "OS_EVENT"))
    assert s.table["patient_id"].nunique() < len(s.table)                          # a patient with 2 slides
    header = (EXAMPLES / "template.csv").read_text().splitlines()[0].split(",")
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{col}`" in readme for col in header)                            # every column documented
