"""A slide's IHC result as JSON, and ``scores.csv``: one row per slide result in the folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..batch import NOT_EVALUABLE
from ..heatmap.files import write_csv
from ..roi import ROI
from .deconvolution import StainBasis
from .hotspot import Hotspot
from .maps import TileTable
from .markers import Marker
from .scores import allred, h_score, percent_positive
from .tissue import TissueMap

log = logging.getLogger(__name__)

SCHEMA = "pathology-ihc/2"
CLASS_NAMES = ("negative", "weak_1plus", "moderate_2plus", "strong_3plus")
SCOPE = {False: "Every nucleus detected on the tissue is scored (tumour, stroma and immune cells alike); "
                "guidelines count invasive tumour cells only: give the tumour as an ROI (--roi) or review the QC "
                "picture and maps.",
         True: "Every nucleus detected inside the ROI is scored."}
SCORES_CSV = "scores.csv"
CSV_COLUMNS = ["slide_id", "marker", "status", "cells", *CLASS_NAMES, "percent_positive", "h_score",
               "allred_proportion", "allred_intensity", "allred_total", "call", "call_value", "hotspot_index",
               "hotspot_cells", "dab_positive_area_percent", "scored_mm2", "roi", "working_mpp", "thresholds",
               "not_evaluable_reason"]
KI67_FEW_CELLS = 500           # IKWG: count at least 500 tumour cells (global: 4 fields x 100 or more)


MIN_CELLS_FOR_CHECK = 20       # per side, before the nucleus sizes of positive and negative cells are compared
SIZE_RATIO_WARNING = 2.0        # positive "nuclei" this much larger than negative ones: not nuclear staining
STAINED_AROUND_WARNING = 0.25   # this share of nuclei sitting in DAB-stained tissue: the DAB is not nuclear


def nucleus_sizes(table: TileTable) -> dict[str, float | None]:
    """Mean nucleus area (µm²) of the negative and of the positive (1+ to 3+) cells."""
    counts, areas = table.counts.sum(axis=0), table.area_sum.sum(axis=0)
    neg, pos = int(counts[0]), int(counts[1:].sum())
    return {"negative": round(float(areas[0]) / neg, 1) if neg else None,
            "positive": round(float(areas[1:].sum()) / pos, 1) if pos else None}


def staining_warnings(marker: Marker, counts: np.ndarray, sizes: dict[str, float | None],
                      stained_around: int) -> list[str]:
    """Plausibility checks a reader of the scores should see. A nuclear marker's DAB belongs in
    nuclei: when many nuclei sit in DAB-stained cytoplasm or membranes, or the positive
    "nuclei" are much larger than the negative ones, the stain is membranous or cytoplasmic
    and the nuclear counts are meaningless."""
    if marker.compartment != "nuclear" or counts.sum() < MIN_CELLS_FOR_CHECK:
        return []
    n = int(counts.sum())
    hint = f"so these {marker.name} counts are unreliable; check the QC picture (a membrane marker is --marker her2)"
    if stained_around >= STAINED_AROUND_WARNING * n:
        return [f"{100 * stained_around / n:.0f}% of nuclei sit in DAB-stained tissue: the DAB looks membranous or "
                f"cytoplasmic, not nuclear, {hint}"]
    if counts[0] < MIN_CELLS_FOR_CHECK or counts[1:].sum() < MIN_CELLS_FOR_CHECK:
        return []
    ratio = sizes["positive"] / sizes["negative"]
    if ratio < SIZE_RATIO_WARNING:
        return []
    return [f"positive nuclei are {ratio:.1f}x larger than negative ones ({sizes['positive']:.0f} vs "
            f"{sizes['negative']:.0f} µm²): the DAB looks membranous or cytoplasmic, not nuclear, {hint}"]


def slide_record(*, schema: str, slide_id: str, slide_path: str, slide_fingerprint: str, params: dict,
                 marker: Marker, counts: np.ndarray, table: TileTable, basis: StainBasis, mpp: float,
                 mpp_source: str, reason: str | None, hotspot: Hotspot | None, roi: ROI | None, tissue: TissueMap,
                 region_mm2: float, outputs: dict, software_version: str, created: str) -> dict:
    """The JSON content of one slide's result (every score is recomputable from ``class_counts``).
    A not evaluable slide has ``status`` "not evaluable", its reason, and no score at all."""
    n = int(counts.sum())
    tissue_px = int(table.tissue_px.sum())
    sizes = nucleus_sizes(table)
    evaluable = reason is None
    warnings = staining_warnings(marker, counts, sizes, int(table.stained_around.sum())) if evaluable else []
    if evaluable and marker.name == "ki67" and n < KI67_FEW_CELLS:
        warnings.append(f"{n} nuclei counted, fewer than the {KI67_FEW_CELLS} the International Ki67 Working Group "
                        f"asks for: the index is imprecise")
    if evaluable and marker.name == "ki67" and hotspot is None:
        warnings.append(f"no hotspot: no circle of {params['hotspot_mm2']:g} mm² lies on what was scored with "
                        f"{params['hotspot_min_cells']} nuclei or more (--hotspot-mm2)")
    call = marker.call(counts) if evaluable else {
        "result": f"{NOT_EVALUABLE}: {reason}", "value": None,
        "rule": "no score is given for a slide without enough tissue or cells (see not_evaluable_reason)"}
    return {
        "schema": schema, "slide_id": slide_id, "slide_path": slide_path, "slide_fingerprint": slide_fingerprint,
        "status": "done" if evaluable else NOT_EVALUABLE, "not_evaluable_reason": reason,
        "marker": {"name": marker.name, "title": marker.title, "compartment": marker.compartment},
        "cells": n,
        "class_counts": dict(zip(CLASS_NAMES, map(int, counts), strict=True)),
        "class_percent": dict(zip(CLASS_NAMES, (round(100 * float(c) / n, 3) if n else 0.0 for c in counts),
                                  strict=True)),
        "percent_positive": round(percent_positive(counts), 3) if evaluable else None,
        "h_score": round(h_score(counts), 2) if evaluable else None,
        "allred": allred(counts) if evaluable else None,
        "call": call,
        "hotspot": hotspot.describe(mpp) if hotspot is not None else None,
        "dab_positive_area_percent": round(100 * float(table.dab_px.sum()) / tissue_px, 3) if tissue_px else None,
        "mean_cell_intensity_od": round(float(table.intensity_sum.sum()) / n, 4) if n else None,
        "mean_nucleus_area_um2": sizes,
        "warnings": warnings,
        "thresholds_dab_od": params["thresholds"],
        "stain_basis": basis.describe(),
        "mpp_level0": mpp, "mpp_source": mpp_source, "working_mpp": params["working_mpp"],
        "tissue": {**tissue.describe(), "mask_um_per_px": round(tissue.scale[0] * mpp, 3)},
        "roi": roi.describe() if roi is not None else None,
        "scored_mm2": round(region_mm2, 4), "tiles": len(table.counts),
        "scope": SCOPE[roi is not None], "outputs": outputs, "params": params,
        "software_version": software_version, "created": created,
    }


def write_scores_csv(out_dir: Path) -> Path | None:
    """Rebuild ``scores.csv`` from every slide result (``*.json`` of this schema) in ``out_dir``;
    a not evaluable slide's scores are left empty."""
    rows = []
    for path in sorted(out_dir.glob("*.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s: unreadable, left out of %s", path, SCORES_CSV)
            continue
        if not isinstance(r, dict) or r.get("schema") != SCHEMA:
            continue
        t, a, hot = r["thresholds_dab_od"], r["allred"] or {}, r["hotspot"] or {}
        blank = lambda v: "" if v is None else v
        rows.append([r["slide_id"], r["marker"]["name"], r["status"], r["cells"],
                     *(r["class_counts"][c] for c in CLASS_NAMES), blank(r["percent_positive"]), blank(r["h_score"]),
                     blank(a.get("proportion_score")), blank(a.get("intensity_score")), blank(a.get("total")),
                     r["call"]["result"], blank(r["call"]["value"]), blank(hot.get("index")), blank(hot.get("cells")),
                     blank(r["dab_positive_area_percent"]), r["scored_mm2"], (r["roi"] or {}).get("path", ""),
                     r["working_mpp"], f"{t['weak']:g}/{t['moderate']:g}/{t['strong']:g}",
                     blank(r["not_evaluable_reason"])])
    if not rows:
        return None
    return write_csv(out_dir / SCORES_CSV, CSV_COLUMNS, rows)
