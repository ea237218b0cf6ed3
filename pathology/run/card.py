"""The model card of a trained run: what it was trained on, how well it did in
cross-validation, how calibrated it is and when its calls are flagged; shown at the top of
``report.html`` and as the ``model`` line of ``pathology run``'s console summary.

Everything comes from the run folder: ``config.json`` (provenance, encoder and weights,
tiling and stain settings, software) and ``metrics.json`` (cross-validated metrics with their
95% CIs, calibration) and the out-of-distribution thresholds with their false-flag rates. A run
written before these were recorded gets a card saying so.
"""

from __future__ import annotations

import html
import json
import math

from mil.ood import OodRecord
from mil.predict import Run

_CSS = """
.modelcard{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px;margin-bottom:18px;font-size:14px}
.modelcard h2{font-size:17px;margin:0 0 8px} .modelcard dl{display:grid;grid-template-columns:max-content auto;
gap:3px 14px;margin:0} .modelcard dt{color:#555} .modelcard dd{margin:0}
.banner{background:#fdecea;border:1px solid #f5c2c0;color:#8a1c14;border-radius:6px;padding:10px 14px;
margin-bottom:14px;font-weight:600}
"""
# the metrics a task kind is judged by (mil.metrics' names), as the card names them
HEADLINE: dict[str, tuple[tuple[str, str], ...]] = {
    "binary": (("auc", "AUC"),),
    "multiclass": (("auc", "macro AUC"), ("balanced_accuracy", "balanced accuracy")),
    "regression": (("pearson", "Pearson r"), ("mae", "MAE")),
    "survival": (("c_index", "C-index"),),
}


def read_metrics(run: Run) -> dict:
    """The run's ``metrics.json`` ({} when it is missing or unreadable: the card says less)."""
    try:
        return json.loads((run.path / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def performance(metrics: dict) -> list[str]:
    """One line per task: its kind's headline metrics, pooled out-of-fold, with their 95% CIs."""
    lines = []
    for task, summary in metrics.get("tasks", {}).items():
        parts = []
        for name, label in HEADLINE.get(summary.get("kind"), ()):
            m = summary.get("metrics", {}).get(name)
            if m is not None:
                ci = m.get("ci95") or [None, None]
                parts.append(f"{label} {_num(m.get('pooled'))} (95% CI {_num(ci[0])}–{_num(ci[1])})")
        if parts:
            lines.append(f"{task}: {'; '.join(parts)}, n = {summary.get('n')}")
    return lines


def calibration_lines(metrics: dict) -> list[str]:
    entry = metrics.get("calibration") or {}
    lines = []
    for task, c in entry.get("tasks", {}).items():
        text = f"{task}: ECE {_num(c.get('ece'))}"
        if c.get("ece_before_scaling") is not None:
            text += f" after temperature scaling ({_num(c['ece_before_scaling'])} before)"
        lines.append(text)
    return lines


def ood_lines(record: OodRecord | None) -> list[str]:
    """How each out-of-distribution threshold was set, with its false-flag rate on the training folds."""
    lines = []
    for what, t in (("features", record.embedding if record else None), ("stain", record.stain if record else None)):
        if t is not None:
            lines.append(f"{what}: distance > {_num(t.threshold, 2)} flags a slide; "
                         f"{_num(100 * t.false_flag_rate, 0)}% of the {t.n} training slides held out by the "
                         f"folds were flagged ({_num(100 * t.alpha, 0)}% expected for slides like them)")
    return lines


def model_line(run: Run) -> str:
    """The console's one-line summary of the model."""
    config, p = run.config, run.config.provenance
    encoder = config.feature_attrs.encoder if config.feature_attrs else config.features
    text = f"{config.model.name} ({len(run.models)} folds) on {encoder} features"
    if p is None:
        return text + "; no training provenance recorded (run written before model cards)"
    text += f", trained on {p.cohort} ({p.n_slides} slides, {p.n_patients} patients"
    text += ", SYNTHETIC)" if p.synthetic else ")"
    if p.intended_use:
        text += f"; intended use: {p.intended_use}"
    return text


def card_html(run: Run) -> str:
    """The model card (and, for a model trained on synthetic slides, a banner above it)."""
    config, p, metrics = run.config, run.config.provenance, read_metrics(run)
    rows: list[tuple[str, str]] = [("model", f"{config.model.name}, {len(run.models)} fold models, "
                                             f"tasks {', '.join(config.kinds)}")]
    if p is not None:
        rows += [("training cohort", f"{p.cohort}: {p.n_slides} slides, {p.n_patients} patients"
                                     + (" — synthetic" if p.synthetic else "")),
                 ("per task", "; ".join(f"{t}: {c.slides} slides, {c.patients} patients" for t, c in p.tasks.items())),
                 ("intended use", p.intended_use or "not stated by the trainer"),
                 ("trained", p.created)]
        if p.mpp_level0:
            rows.append(("training slides", f"level 0 at {p.mpp_level0[0]:.3g}–{p.mpp_level0[1]:.3g} µm/px"))
    attrs, settings = config.feature_attrs, config.bag_settings
    if attrs is not None:
        sha = f", weights sha256 {attrs.weights_sha256[:12]}…" if attrs.weights_sha256 else ""
        rows.append(("encoder", f"{attrs.encoder} ({attrs.dim}-d{sha})"))
    if settings is not None:
        stain = (settings.stain or {}).get("method", "none")
        rows.append(("tiling", f"{settings.patch_size} px patches at {settings.target_mpp} µm/px, stain {stain}"))
    if config.software is not None:
        rows.append(("software", f"{config.software.name} {config.software.version}, torch {config.software.torch}"))
    for label, lines in (("cross-validated", performance(metrics)), ("calibration", calibration_lines(metrics)),
                         ("out-of-distribution", ood_lines(config.ood))):
        if lines:
            rows.append((label, "\n".join(lines)))
    if p is None:
        rows.append(("provenance", "not recorded: the run was written before model cards; nothing says what it "
                                   "was trained on"))
    body = "".join(f"<dt>{html.escape(k)}</dt><dd>{'<br>'.join(map(html.escape, v.splitlines()))}</dd>"
                   for k, v in rows)
    banner = (f'<div class="banner">This model was {html.escape(p.warning)}. Its calls on any real slide mean '
              "nothing.</div>") if p is not None and p.warning else ""
    return f'<style>{_CSS}</style>{banner}<div class="modelcard"><h2>Model card</h2><dl>{body}</dl></div>'
