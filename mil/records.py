"""One slide of a cohort as read from its table(s), before validation: shared by the manifest
reader (:mod:`mil.manifest`) and STAMP's two-table layout (:mod:`mil.stamp`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pathology.table import Loc


@dataclass
class Record:
    """One slide with its raw cells and where each came from (key None: the slide's own row)."""

    slide_id: str
    patient_id: str
    values: dict[str, str]
    locs: dict[str | None, Loc] = field(default_factory=dict)

    def loc(self, column: str | None = None) -> Loc:
        return self.locs.get(column, self.locs[None])
