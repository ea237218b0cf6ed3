"""STAMP's two-table cohort layout, read into the same records as a one-table manifest.

STAMP (Kather lab) keeps a *clinical table* with one row per patient (``PATIENT`` plus the
label columns) and a *slide table* mapping each slide to its patient (``PATIENT``,
``FILENAME``). The slide id is ``FILENAME`` without its folder and without a bag or slide
extension (``.h5``, ``.pt``, ``.svs``…), so ``TCGA-XX.1234.h5`` names slide ``TCGA-XX.1234``.
Labels, ``fold`` and ``split`` may sit in either table; where both have a column the slide
table's cell is used. Slides of a patient absent from the clinical table keep unknown
labels (with a warning), as STAMP drops them from training.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path, PurePath

from pathology.slide import SLIDE_EXTENSIONS
from pathology.table import read_table, where

from .data import BAG_SUFFIXES
from .records import Record

log = logging.getLogger(__name__)

PATIENT = "PATIENT"
FILENAME = "FILENAME"
STRIPPED_SUFFIXES = set(BAG_SUFFIXES) | SLIDE_EXTENSIONS


def slide_id_from_filename(filename: str) -> str:
    """``FILENAME`` without folder and without a known bag/slide extension (other dots stay)."""
    name = PurePath(filename.replace("\\", "/")).name
    stem, dot, suffix = name.rpartition(".")
    return stem if dot and f".{suffix.lower()}" in STRIPPED_SUFFIXES else name


def stamp_records(slide_table: Path, clinical: Path, needed: Sequence[str], problems: list[str]) -> list[Record]:
    """Records of a STAMP slide table joined to its clinical table on ``PATIENT``."""
    slides = read_table(slide_table, problems)
    clini = read_table(clinical, problems)
    slides.require([PATIENT, FILENAME], problems)
    clini.require([PATIENT], problems)
    own = [c for c in needed if c not in slides.columns]
    clini.require(own, problems, elsewhere=slides.columns)
    if PATIENT not in slides.columns or FILENAME not in slides.columns:
        return []

    by_patient: dict[str, int] = {}
    if PATIENT in clini.columns:
        for j, row in enumerate(clini.rows):
            patient = row[PATIENT]
            if not patient:
                problems.append(f"{where(clini.loc(j), PATIENT)}: empty PATIENT")
            elif patient in by_patient:
                problems.append(f"{where(clini.loc(j), PATIENT)}: duplicate PATIENT {patient!r} (first on "
                                f"{where(clini.loc(by_patient[patient]))}); the clinical table has one row "
                                f"per patient")
            else:
                by_patient[patient] = j

    slide_columns = [c for c in slides.columns if c not in (PATIENT, FILENAME)]
    clini_columns = [c for c in clini.columns if c != PATIENT and c not in slide_columns]
    records, unmatched = [], set()
    for i, row in enumerate(slides.rows):
        loc = slides.loc(i)
        patient, filename = row[PATIENT], row[FILENAME]
        if not patient:
            problems.append(f"{where(loc, PATIENT)}: empty PATIENT")
        if not filename:
            problems.append(f"{where(loc, FILENAME)}: empty FILENAME")
        if not patient or not filename:
            continue
        values = {c: row[c] for c in slide_columns}
        locs = {None: loc}
        j = by_patient.get(patient)
        if j is None:
            unmatched.add(patient)
        else:
            values.update({c: clini.rows[j][c] for c in clini_columns})
            locs.update({c: clini.loc(j) for c in clini_columns})
        records.append(Record(slide_id_from_filename(filename), patient, values, locs))
    if unmatched and PATIENT in clini.columns:
        log.warning("%s: %d patient(s) of the slide table are not in the clinical table; their labels are "
                    "unknown (first: %s)", clini.path.name, len(unmatched), sorted(unmatched)[0])
    return records
