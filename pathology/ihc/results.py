"""A slide's IHC result as JSON, and ``scores.csv``: one row per slide result in the folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..heatmap.files import write_csv
from .deconvolution import StainBasis
from .maps import TileTable
from .markers import Marker
from .scores import allred, h_score, percent_positive

log = logging.getLogger(__name__)

CLASS_NAMES = ("negative", "weak_1plus", "moderate_2plus", "strong_3plus")
SCOPE = ("Every nucleus detected on the tissue mask is scored (tumour, stroma and immune cells alike); "
         "guidelines count invasive tumour cells only, so review the QC picture and maps.")
SCORES_CSV = "scores.csv"
NOT_EVALUABLE = "not evaluable (no cells found)"
CSV_COLUMNS = ["slide_id", "marker", "cells", *CLASS_NAMES, "percent_positive", "h_score", "allred_proportion",
               "allred_intensity", "allred_total", "call", "call_value", "dab_positive_area_percent", "tissue_mm2",
               "working_mpp", "thresholds"]


MIN_CELLS_FOR_CHECK = 20       # per side, before the nucleus sizes of positive and negative cells are compared
SIZE_RATIO_WARNING = 2.0        # positive "nuclei" this much larger than negative ones: not nuclear staining


def nucleus_sizes(table: TileTable) -> dict[str, float | None]:
    """Mean nucleus area (µm²) of the negative and of the positive (1+ to 3+) cells."""
    counts, areas = table.counts.sum(axis=0), table.area_sum.sum(axis=0)
    neg, pos = int(counts[0]), int(counts[1:].sum())
    return {"negative": round(float(areas[0]) / neg, 1) if neg else None,
            "positive": round(float(areas[1:].sum()) / pos, 1) if pos else None}


def staining_warnings(marker: Marker, counts: np.ndarray, sizes: dict[str, float | None]) -> list[str]:
    """Plausibility checks a reader of the scores should see: a nuclear marker whose positive
    "nuclei" are much larger than its negative ones is staining membranes or cytoplasm, and the
    nuclear counts are then meaningless."""
    if marker.compartment != "nuclear" or counts[0] < MIN_CELLS_FOR_CHECK or counts[1:].sum() < MIN_CELLS_FOR_CHECK:
        return []
    ratio = sizes["positive"] / sizes["negative"]
    if ratio < SIZE_RATIO_WARNING:
        return []
    return [f"positive nuclei are {ratio:.1f}x larger than negative ones ({sizes['positive']:.0f} vs "
            f"{sizes['negative']:.0f} µm²): the DAB looks membranous or cytoplasmic, not nuclear, so these "
            f"{marker.name} counts are unreliable; check the QC picture (a membrane marker is --marker her2)"]


def slide_record(*, schema: str, slide_id: str, slide_path: str, slide_fingerprint: str, params: dict,
                 marker: Marker, counts: np.ndarray, table: TileTable, basis: StainBasis, mpp: float,
                 mpp_source: str, outputs: dict, software_version: str, created: str) -> dict:
    """The JSON content of one slide's result (every score is recomputable from ``class_counts``)."""
    n = int(counts.sum())
    tissue_px = int(table.tissue_px.sum())
    sizes = nucleus_sizes(table)
    return {
        "schema": schema, "slide_id": slide_id, "slide_path": slide_path, "slide_fingerprint": slide_fingerprint,
        "marker": {"name": marker.name, "title": marker.title, "compartment": marker.compartment},
        "cells": n,
        "class_counts": dict(zip(CLASS_NAMES, map(int, counts), strict=True)),
        "class_percent": dict(zip(CLASS_NAMES, (round(100 * float(c) / n, 3) if n else 0.0 for c in counts),
                                  strict=True)),
        "percent_positive": round(percent_positive(counts), 3),
        "h_score": round(h_score(counts), 2),
        "allred": allred(counts),
        "call": marker.call(counts) if n else {"result": NOT_EVALUABLE, "value": None,
                                                "rule": "no cells were found on the tissue mask"},
        "dab_positive_area_percent": round(100 * float(table.dab_px.sum()) / tissue_px, 3) if tissue_px else 0.0,
        "mean_cell_intensity_od": round(float(table.intensity_sum.sum()) / n, 4) if n else 0.0,
        "mean_nucleus_area_um2": sizes,
        "warnings": staining_warnings(marker, counts, sizes),
        "thresholds_dab_od": params["thresholds"],
        "stain_basis": basis.describe(),
        "mpp_level0": mpp, "mpp_source": mpp_source, "working_mpp": params["working_mpp"],
        "tissue_mm2": round(tissue_px * params["working_mpp"] ** 2 / 1e6, 4), "tiles": len(table.counts),
        "scope": SCOPE, "outputs": outputs, "params": params,
        "software_version": software_version, "created": created,
    }


def write_scores_csv(out_dir: Path) -> Path | None:
    """Rebuild ``scores.csv`` from every slide result (``*.json`` of this schema) in ``out_dir``."""
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable, left out of %s", path, SCORES_CSV)
            continue
        if not isinstance(r, dict) or not str(r.get("schema", "")).startswith("pathology-ihc/"):
            continue
        t = r["thresholds_dab_od"]
        rows.append([r["slide_id"], r["marker"]["name"], r["cells"], *(r["class_counts"][c] for c in CLASS_NAMES),
                     r["percent_positive"], r["h_score"], r["allred"]["proportion_score"],
                     r["allred"]["intensity_score"], r["allred"]["total"], r["call"]["result"], r["call"]["value"],
                     r["dab_positive_area_percent"], r["tissue_mm2"], r["working_mpp"],
                     f"{t['weak']:g}/{t['moderate']:g}/{t['strong']:g}"])
    if not rows:
        return None
    return write_csv(out_dir / SCORES_CSV, CSV_COLUMNS, rows)
