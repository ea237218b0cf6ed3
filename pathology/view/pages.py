"""The two HTML pages: the slide list (``/``) and a slide's viewer (``/view/<slide_id>``).

The list is rendered here, paged and searchable without JavaScript, so a folder of a
thousand slides opens at once. The viewer page is a skeleton; ``static/viewer.js`` builds it
from the slide's JSON (``/api/slides/<slide_id>``).
"""

from __future__ import annotations

import html
import json
from urllib.parse import quote, urlencode

from .. import __version__
from .catalog import Catalog, Entry

PER_PAGE = 50


def slide_url(slide_id: str) -> str:
    """The viewer page of a slide (``report.html`` links the same, relative: ``view/<id>``)."""
    return f"/view/{quote(slide_id, safe='')}"


def _head(title: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><link rel="icon" href="data:,">'
            '<link rel="stylesheet" href="/static/viewer.css"></head>')


def _call_cells(entry: Entry, columns: list[str]) -> str:
    calls = {c.name: c for c in entry.calls}
    cells = []
    for name in columns:
        call = calls.get(name)
        tone = f' class="{call.tone}"' if call and call.tone else ""
        cells.append(f"<td{tone}>{html.escape(call.text) if call else ''}</td>")
    return "".join(cells)


def _thumbnail(catalog: Catalog, entry: Entry) -> str:
    """The slide's QC picture from tiling (thumbnail, tissue and patch grid), when there is one."""
    if not catalog.path("bags", "qc", f"{entry.slide_id}.png").is_file():
        return ""
    src = f"/bags/qc/{quote(entry.slide_id, safe='')}.png"
    return f'<a href="{src}"><img class="thumb" src="{src}" alt="" loading="lazy"></a>'


def index_page(catalog: Catalog, query: str = "", page: int = 1, has_report: bool = False) -> str:
    """The slide list: a search box, one row per slide with its calls, and page links."""
    entries, total = catalog.search(query, page, PER_PAGE)
    pages = max(1, -(-total // PER_PAGE))
    page = min(max(1, page), pages)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in catalog.columns)
    rows = []
    for e in entries:
        name = html.escape(e.slide_id)
        link = name if e.status == "failed" else f'<a href="{slide_url(e.slide_id)}">{name}</a>'
        status = html.escape(e.status) + (f' <span class="msg">{html.escape(e.message)}</span>' if e.message else "")
        rows.append(f"<tr><td>{_thumbnail(catalog, e)}</td><td>{link}</td><td>{status}</td>"
                    f"{_call_cells(e, catalog.columns)}</tr>")

    def page_link(n: int, text: str) -> str:
        params = urlencode({k: v for k, v in (("q", query), ("page", n)) if v})
        return f'<a href="/?{params}">{text}</a>'

    nav = []
    if page > 1:
        nav.append(page_link(page - 1, "← previous"))
    nav.append(f"page {page} of {pages}")
    if page < pages:
        nav.append(page_link(page + 1, "next →"))
    report = ' · <a href="/report.html">report</a>' if has_report else ""
    shown = f"{total} of {len(catalog.entries)} slides match" if query else f"{total} slides"
    return (f"{_head('pathology view')}<body class=\"index\"><header><h1>pathology view</h1>"
            f'<div class="meta">{html.escape(str(catalog.root))} · {catalog.kind} · {shown}{report}</div></header>'
            f'<form method="get" action="/"><input type="search" name="q" value="{html.escape(query)}" '
            f'placeholder="slide id or call" autofocus> <button>search</button></form>'
            f'<table class="slides"><thead><tr><th></th><th>slide</th><th>status</th>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table><nav class="pages">{" · ".join(nav)}</nav>'
            f'<footer>pathology-mil {__version__} · read-only · scores are model outputs for research use, '
            "not a diagnosis</footer></body></html>\n")


def viewer_page(slide_id: str) -> str:
    """A slide's viewer page: the skeleton ``viewer.js`` fills in."""
    base = f"/api/slides/{quote(slide_id, safe='')}"
    config = {"slide_id": slide_id, "info": base, "dzi": f"/slides/{quote(slide_id, safe='')}.dzi",
              "static": "/static/"}
    # "</" cannot end the script element early: JSON escapes it
    data = json.dumps(config).replace("</", "<\\/")
    return (f"{_head(slide_id + ' · pathology view')}<body class=\"viewer\">"
            f'<aside id="panel"><a href="/">← all slides</a><h1>{html.escape(slide_id)}</h1>'
            '<div id="calls"></div><div id="notes"></div>'
            '<section id="controls" hidden>'
            '<label class="row">overlay <select id="layer"></select></label>'
            '<label class="row" id="scale-row" hidden>colours <select id="scale"></select></label>'
            '<label class="row">opacity <input type="range" id="opacity" min="0" max="100" value="45"></label>'
            '<div id="colourbar" hidden><div class="bar"></div><div class="ticks"></div><div class="label"></div></div>'
            '<label class="row"><input type="checkbox" id="show-tissue" checked> tissue outline</label>'
            '<label class="row"><input type="checkbox" id="show-boxes" checked> highest and lowest boxes</label>'
            '<label class="row" id="roi-row" hidden><input type="checkbox" id="show-roi" checked> scored ROI</label>'
            '<div id="nuclei"></div><div id="shapes"></div><div id="extremes"></div><div id="ihc"></div></section>'
            '<p class="help">Drag to pan, scroll to zoom; click a box or a list entry to go to it.</p></aside>'
            '<main id="osd"></main>'
            f'<script type="application/json" id="config">{data}</script>'
            '<script src="/static/openseadragon/openseadragon.min.js"></script>'
            '<script src="/static/viewer.js"></script></body></html>\n')
