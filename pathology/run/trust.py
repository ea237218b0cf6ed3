"""The trust columns and warnings of ``pathology run``: each slide's assessment
(:func:`mil.assess.assess_slide`: synthetic training cohort, out of distribution, stain,
resolution) as ``results.csv`` columns, on the report's cards and in the console summary.
"""

from __future__ import annotations

from mil.assess import COLUMNS, SlideTrust, warning_counts


def trust_columns(header: list[str], rows: list[dict], outcomes) -> tuple[list[str], list[dict]]:
    """``results.csv``'s header and rows with :data:`COLUMNS` added (from each outcome's assessment)."""
    for row, o in zip(rows, outcomes, strict=True):
        if o.status == "done" and "trust" in o.data:
            row.update(SlideTrust.from_data(o.data["trust"]).columns())
    return [*header, *COLUMNS], rows


def attach(reports, outcomes) -> None:
    """Give each report card its slide's warnings."""
    for report, o in zip(reports, outcomes, strict=True):
        if o.status == "done" and "trust" in o.data:
            trust = SlideTrust.from_data(o.data["trust"])
            report.warnings, report.reliable = trust.warnings, trust.reliable


def trust_summary(reports) -> list[str]:
    """The console's warning lines: each distinct warning with the number of slides it concerns."""
    return warning_counts([report.warnings for report in reports])
