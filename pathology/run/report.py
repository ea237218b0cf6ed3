"""``report.html``: every slide of a ``pathology run`` batch on one static page.

One card per slide: its QC thumbnail, each task's score and call (with the threshold
used), and the task heatmaps side by side. Pictures are linked by relative path, so the
folder can be moved, zipped or opened offline; nothing is fetched from the network.

Served by ``pathology view`` (which serves the folder's ``report.html``), each slide also
links to its zoomable viewer page (``view/<slide_id>``): a line of script asks the server
whether it is the viewer and shows the links; opened from disk, the page says how to start
one instead.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from ..publish import publish_text

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .meta{color:#666;font-size:13px;margin-bottom:18px}
table.summary{border-collapse:collapse;margin-bottom:24px;font-size:14px}
table.summary th,table.summary td{border:1px solid #ddd;padding:4px 10px;text-align:left}
table.summary th{background:#f0f0f0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:14px;margin-bottom:18px}
.card h2{font-size:17px;margin:0 0 8px} .row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
figure{margin:0;max-width:420px} figure img{max-width:420px;max-height:420px;border:1px solid #ccc}
figcaption{font-size:13px;color:#444;margin-top:4px}
.pos{color:#b00020;font-weight:600} .neg{color:#1b5e20;font-weight:600} .failed{color:#b00020}
.note{font-size:12px;color:#777;margin-top:20px}
.warn{color:#8a1c14;font-size:13px} .unreliable{text-decoration:line-through;color:#888;font-weight:400}
.viewer-link{display:none;font-size:13px;font-weight:400;margin-left:8px} body.viewer-on .viewer-link{display:inline}
body.viewer-on .viewer-hint{display:none}
"""
# Shows the viewer links when the page is served by `pathology view` (its /api/viewer answers);
# from disk (file:) nothing is asked.
_VIEWER_PROBE = ('<script>if(location.protocol!=="file:")fetch("api/viewer").then(r=>r.ok?r.json():null)'
                 '.then(v=>{if(v&&v.app==="pathology view")document.body.classList.add("viewer-on")})'
                 '.catch(()=>{})</script>')


@dataclass
class TaskResult:
    """One task's answer for one slide: a binary probability with its cut-off, a multi-class
    task's class probabilities, a regression value or a survival risk."""

    task: str
    kind: str                       # "binary", "multiclass", "regression" or "survival"
    score: float                    # binary: probability; multiclass: the called class's probability
    threshold: float | None = None  # binary tasks: the call's cut-off
    heatmap: Path | None = None
    classes: tuple[str, ...] = ()   # multiclass: every class; binary: () or (negative, positive) names
    probabilities: tuple[float, ...] = ()   # multiclass: one per class
    class_heatmaps: tuple[Path, ...] = ()   # multiclass: one map per class, where the model gives them

    @property
    def call(self) -> str:
        if self.kind == "multiclass":
            return self.classes[max(range(len(self.probabilities)), key=self.probabilities.__getitem__)]
        if self.kind != "binary" or self.threshold is None:
            return "value" if self.kind == "regression" else "risk"
        positive = self.score >= self.threshold
        if len(self.classes) == 2:
            return self.classes[int(positive)]
        return "positive" if positive else "negative"


@dataclass
class SlideReport:
    slide_id: str
    status: str                     # "done", "skipped" (already done), "failed"
    patches: int = 0
    message: str = ""
    thumbnail: Path | None = None
    tasks: list[TaskResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)   # pathology.run.trust: shown on every result
    reliable: bool = True


def _img(path: Path | None, out_dir: Path, caption: str) -> str:
    if path is None or not Path(path).exists():
        return ""
    src = html.escape(Path(os.path.relpath(path, out_dir)).as_posix())
    return (f'<figure><a href="{src}"><img src="{src}" alt="{html.escape(caption)}" loading="lazy"></a>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _viewer_link(slide_id: str, text: str) -> str:
    """The slide's page in ``pathology view`` (shown only when the viewer serves this report)."""
    return f'<a class="viewer-link" href="view/{html.escape(quote(slide_id, safe=""))}">{text}</a>'


def _call_html(t: TaskResult, reliable: bool = True) -> str:
    text = _call_text(t)
    return text if reliable else f'<span class="unreliable">{text}</span> <span class="warn">not reliable</span>'


def _call_text(t: TaskResult) -> str:
    if t.kind == "multiclass":
        probs = ", ".join(f"{html.escape(c)} {p:.2f}" for c, p in zip(t.classes, t.probabilities))
        return f'<span class="pos">{html.escape(t.call)}</span> ({probs})'
    if t.kind == "regression":
        return f"{t.score:.3g}"
    if t.kind != "binary":
        return f"risk {t.score:.3f}"
    css = "pos" if t.score >= t.threshold else "neg"
    return f'<span class="{css}">{html.escape(t.call)}</span> ({t.score:.3f}, cut-off {t.threshold:g})'


def _metrics_html(rows: Sequence[Sequence[str]], figures: Sequence[Path], out_dir: Path) -> str:
    """The cohort's metrics table (task, metric, fold mean, pooled, 95% CI) and its plots."""
    if not rows and not figures:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("task", "metric", "folds: mean", "pooled", "95% CI"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    pictures = "".join(_img(f, out_dir, f.stem.replace("_", " ")) for f in figures)
    return (f'<div class="card"><h2>Cross-validated metrics</h2><table class="summary"><tr>{head}</tr>{body}'
            f'</table><div class="row">{pictures}</div></div>')


def render_report(slides: Sequence[SlideReport], out_dir: Path, *, title: str, model: str,
                  notes: Sequence[str] = (), metrics: Sequence[Sequence[str]] = (),
                  figures: Sequence[Path] = (), card: str = "") -> str:
    """The HTML text of the report (pictures referenced relative to ``out_dir``); ``metrics``
    rows and ``figures`` (ROC, Kaplan-Meier) head the page when given, below the model ``card`` (HTML,
    :mod:`.card`). A slide's ``warnings`` appear on its row and card; an unreliable slide's calls are
    struck through and marked "not reliable"."""
    tasks = list(dict.fromkeys(t.task for s in slides for t in s.tasks))
    any_warning = any(s.warnings for s in slides)
    head = "".join(f"<th>{html.escape(t)}</th>" for t in tasks) + ("<th>warning</th>" if any_warning else "")
    rows, cards = [], []
    for s in slides:
        by_task = {t.task: t for t in s.tasks}
        cells = "".join(f"<td>{_call_html(by_task[t], s.reliable) if t in by_task else ''}</td>" for t in tasks)
        warn = f'<td class="warn">{"<br>".join(map(html.escape, s.warnings))}</td>' if any_warning else ""
        status = f'<span class="failed">failed: {html.escape(s.message)}</span>' if s.status == "failed" else s.status
        zoom = _viewer_link(s.slide_id, "zoom") if s.status != "failed" else ""
        rows.append(f'<tr><td><a href="#{html.escape(s.slide_id)}">{html.escape(s.slide_id)}</a>{zoom}</td>'
                    f"<td>{status}</td><td>{s.patches}</td>{cells}{warn}</tr>")
        if s.status == "failed":
            continue
        pictures = [_img(s.thumbnail, out_dir, "thumbnail, tissue and patch grid")]
        pictures += [_img(t.heatmap, out_dir, f"{t.task}: attention") for t in s.tasks]
        pictures += [_img(h, out_dir, f"{t.task}: {c}") for t in s.tasks for c, h in zip(t.classes, t.class_heatmaps)]
        calls = "; ".join(f"{html.escape(t.task)}: {_call_html(t, s.reliable)}" for t in s.tasks)
        calls += "".join(f'<br><span class="warn">⚠ {html.escape(w)}</span>' for w in s.warnings)
        cards.append(f'<div class="card" id="{html.escape(s.slide_id)}"><h2>{html.escape(s.slide_id)}'
                     f'{_viewer_link(s.slide_id, "open zoomable, with overlays")}</h2>'
                     f'<p>{calls}</p><div class="row">{"".join(pictures)}</div></div>')
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    note_html += ('<p class="viewer-hint">To zoom into each slide at full resolution under its heatmaps, run '
                  f"<code>pathology view {html.escape(str(Path(out_dir).resolve()))}</code> and open this report at "
                  "the address it prints.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<div class="meta">model: {html.escape(model)} · {len(slides)} slides · {stamp}</div>'
            f"{card}{_metrics_html(metrics, figures, out_dir)}"
            f'<table class="summary"><tr><th>slide</th><th>status</th><th>patches</th>{head}</tr>'
            f'{"".join(rows)}</table>{"".join(cards)}<div class="note">{note_html}</div>{_VIEWER_PROBE}'
            "</body></html>\n")


def write_report(slides: Sequence[SlideReport], out_dir: Path, *, title: str, model: str,
                 notes: Sequence[str] = (), metrics: Sequence[Sequence[str]] = (),
                 figures: Sequence[Path] = (), card: str = "") -> Path:
    """Write ``out_dir/report.html`` atomically and return its path."""
    return publish_text(out_dir / "report.html", render_report(slides, out_dir, title=title, model=model, notes=notes,
                                                               metrics=metrics, figures=figures, card=card))
