"""``index.html`` of a batch: the catalog as one self-contained page.

One row per model with its thumbnail map embedded (``data:`` URI), its metrics and links to
its files (relative to the batch dir, so the folder can be moved or served as it is). A click
on a column header sorts by it (numbers numerically, empty cells last; a second click
reverses): a few lines of inline JavaScript, no external script, style or font. A link
``index.html#sort=<column>`` (``#sort=-<column>``: descending) opens the page sorted.
"""

from __future__ import annotations

import html
import os
from pathlib import Path

from birdflow.batch.thumbnail import data_uri
from birdflow.io import write_text_atomic

SHOWN = ("species", "status", "resolution_km", "cells", "loss", "weights_from", "gain_over_null",
         "mean_ll", "mean_null_ll", "min_distr_cor", "mean_tv", "truth_mean_ll_gain",
         "family", "order", "body_mass_g", "migration_km")
LINKS = (("hdf5", "HDF5"), ("geotiff", "GeoTIFF"), ("report", "report"))

_STYLE = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:middle}
th{background:#f2f2f2;cursor:pointer;user-select:none}th.asc::after{content:" \\25B2"}
th.desc::after{content:" \\25BC"}tr.failed td{background:#fde8e8}td.num{text-align:right}"""

_SCRIPT = """function sortBy(th){const table=th.closest('table'),body=table.tBodies[0];
const col=th.cellIndex,asc=!th.classList.contains('asc');
for(const h of th.parentNode.children){h.classList.remove('asc','desc');}
th.classList.add(asc?'asc':'desc');
const key=r=>{const c=r.cells[col],v=c.dataset.value;return v===undefined?c.textContent:v;};
const rows=Array.from(body.rows);rows.sort((a,b)=>{const x=key(a),y=key(b);
if(x===''&&y==='')return 0;if(x==='')return 1;if(y==='')return -1;
const nx=parseFloat(x),ny=parseFloat(y);
const d=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return asc?d:-d;});
for(const r of rows)body.appendChild(r);}
document.querySelectorAll('th').forEach(th=>th.addEventListener('click',()=>sortBy(th)));
const m=location.hash.match(/^#sort=(-?)(.+)$/);if(m){for(const th of document.querySelectorAll('th')){
if(th.textContent===decodeURIComponent(m[2])){sortBy(th);if(m[1])sortBy(th);}}}"""


def _cell(value) -> str:
    if value is None or value == "":
        return '<td data-value=""></td>'
    if isinstance(value, float):
        text = f"{value:.4g}"
        return f'<td class="num" data-value="{value!r}">{text}</td>'
    if isinstance(value, int):
        return f'<td class="num" data-value="{value}">{value}</td>'
    return f"<td>{html.escape(str(value))}</td>"


def _links(row: dict) -> str:
    parts = [f'<a href="{html.escape(row[k])}">{label}</a>' for k, label in LINKS if row.get(k)]
    return "<td>" + " ".join(parts) + "</td>"


def render_index(rows: list[dict], base: Path) -> str:
    """The page for ``rows`` (thumbnails read relative to ``base``, the batch dir)."""
    head = "".join(f"<th>{c}</th>" for c in ("map", *SHOWN, "files", "error"))
    body = []
    for r in rows:
        uri = data_uri(base / r["thumbnail"]) if r.get("thumbnail") else ""
        img = f'<img alt="{html.escape(str(r["species"]))}" src="{uri}">' if uri else ""
        cells = "".join(_cell(r.get(c)) for c in SHOWN)
        cls = ' class="failed"' if r.get("status") != "finished" else ""
        body.append(f"<tr{cls}><td>{img}</td>{cells}{_links(r)}{_cell(r.get('error'))}</tr>")
    n_ok = sum(r.get("status") == "finished" for r in rows)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>BirdFlow model catalog"
            f"</title><style>{_STYLE}</style></head><body>\n<h1>BirdFlow model catalog</h1>\n"
            f"<p>{n_ok} of {len(rows)} models finished. Click a column header to sort.</p>\n"
            f'<table id="catalog"><thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + f"\n</tbody></table>\n<script>{_SCRIPT}</script>\n</body></html>\n")


def write_index(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ``index.html`` (atomically) beside the rows' files."""
    path = Path(path)
    return write_text_atomic(path, render_index(rows, path.parent))
