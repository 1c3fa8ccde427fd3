"""The validation report: ``validation/validation.json``, CSV tables, figures, ``report.md`` and
a self-contained ``report.html`` (figures embedded), read in a minute.

The headline table has one column per source (``all`` pooled first) and one row per check;
:func:`headline_table` also puts several runs side by side (``birdflow compare``).
Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from birdflow.evaluation.route_biology import QUANTITIES
from birdflow.evaluation.validation_figures import figures
from birdflow.io import atomic_path, write_text_atomic

VALIDATION_DIR = "validation"
VALIDATION_JSON = "validation.json"
OK, FAIL = "✓", "✗"
UNITS = {"speed_km_day": "km/day", "straightness": "", "n_stopovers": "", "stopover_weeks":
         "weeks", "departure_week": "weeks", "arrival_week": "weeks"}


def _f(v, fmt: str = ".3f") -> str:
    if v is None:
        return "—"
    text = format(v, fmt)
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


def _mark(ok) -> str:
    return "" if ok is None else f" {OK if ok else FAIL}"


def headline(result: dict) -> dict[str, dict[str, str]]:
    """{source: {row label: text}}: the checks of every part, one column per source."""
    out = {}
    for src, cal in result["calibration"].items():
        h = result["horizon"][src]
        col = {"intervals": str(cal["n"])}
        col["PIT KS rows / cols (5 % crit.)"] = (
            f"{_f(cal['ks_row'])} / {_f(cal['ks_col'])} ({_f(cal['ks_critical'])})"
            + _mark(cal["calibrated_rows"] and cal["calibrated_cols"] if cal["n"] else None))
        rng = cal["coverage_range"] or [None, None]
        col["95 % set coverage (binomial range)"] = (
            f"{_f(cal['coverage'])} ({_f(rng[0])}–{_f(rng[1])})"
            + _mark(cal["coverage_ok"] if cal["n"] else None))
        for mig, entry in result["connectivity"].items():
            m = entry["by_source"].get(src)
            if m is None or m["observed"] is None or m["observed_ci"] is None:
                col[f"MC {mig}: observed [95 % CI]"] = "—"
                col[f"MC {mig}: model, same origins"] = "—"
            else:
                lo, hi = m["observed_ci"]
                col[f"MC {mig}: observed [95 % CI]"] = (f"{_f(m['observed'])} [{_f(lo)}, {_f(hi)}] "
                                                        f"(n {m['n_birds']})")
                col[f"MC {mig}: model, same origins"] = _f(m["model"]) + _mark(m["model_in_ci"])
            col[f"MC {mig}: model range-wide"] = (_f(entry["range_wide"]["mc"])
                                                  if src == "all" else "")
        col["gain over S&T null (nats/interval)"] = _f(h["mean_gain"], "+.3f")
        col["distance gain (km)"] = _f(h["mean_win_distance"], "+.1f")
        useful = h["useful_days"]
        col["useful horizon (days)"] = (
            "none" if useful is None else "all" if not np.isfinite(useful)
            else ("≥ " if h["useful_days_open"] else "") + f"{useful:g}")
        for mig, by_src in result["route_biology"].items():
            q = by_src.get(src)
            if q is None:
                col[f"route biology {mig}: KS p < 0.05"] = "—"
                continue
            tested = [k for k in QUANTITIES if q[k]["ks_p"] is not None]
            differ = [k for k in tested if q[k]["ks_p"] < 0.05]
            n = q["speed_km_day"]["n_observed"]
            col[f"route biology {mig}: KS p < 0.05"] = (
                f"{len(differ)} of {len(tested)}" + (f" ({', '.join(differ)})" if differ else "")
                + f" (n {n})" if tested else f"— (n {n})")
        out[src] = col
    return out


def headline_table(columns: dict[str, dict[str, str]]) -> str:
    """Markdown table: one row per label, one column per key of ``columns``."""
    names = list(columns)
    labels = list(dict.fromkeys(k for c in columns.values() for k in c))
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {lab} | " + " | ".join(columns[n].get(lab, "") for n in names) + " |"
              for lab in labels]
    return "\n".join(lines)


def route_table(result: dict) -> str:
    """Markdown: per migration and quantity, medians of tracks and model, W1 and KS (pooled).

    Departure and arrival are weeks from the window's first S&T week; their medians also as
    the S&T week they fall in."""
    lines = ["| migration | quantity | n tracks / routes | median tracks | median model | "
             "Wasserstein-1 | KS (p) |", "|---|---|---|---|---|---|---|"]
    for mig, by_src in result["route_biology"].items():
        w0 = result.get("route_windows", {}).get(mig, [None])[0]

        def median(v, q, w0=w0):
            text = _f(v, ".3g")
            if v is not None and w0 is not None and q in ("departure_week", "arrival_week"):
                text += f" (S&T week {(w0 - 1 + round(v)) % 52 + 1})"
            return text

        for q in QUANTITIES:
            r = by_src["all"][q]
            unit = f" {UNITS[q]}" if UNITS[q] else ""
            lines.append(f"| {mig} | {q} | {r['n_observed']} / {r['n_model']} | "
                         f"{median(r['median_observed'], q)} | {median(r['median_model'], q)} | "
                         f"{_f(r['wasserstein'], '.3g')}{unit} | {_f(r['ks'], '.3f')} "
                         f"({_f(r['ks_p'], '.2g')}) |")
    return "\n".join(lines)


def _tables(v, out_dir: Path, head: dict) -> list[Path]:
    res = v.result
    written = []

    def csv(name: str, df: pd.DataFrame) -> None:
        with atomic_path(out_dir / name) as tmp:
            df.to_csv(tmp, index=False)
        written.append(out_dir / name)

    cols = ["bird_id", "source", "line1", "line2", "date1", "date2", "week1", "week2", "lag",
            "cell1", "cell2", "elapsed_days", "elapsed_km", "pit_row", "pit_col", "hpd_v", "hpd_w",
            "in_set", "set_mass", "ll", "null_ll", "ll_gain", "win_distance"]
    csv("intervals.csv", v.scored[[c for c in cols if c in v.scored]])
    csv("calibration.csv", pd.DataFrame([{"source": g, **{k: x for k, x in c.items()
                                                          if not isinstance(x, list)}}
                                         for g, c in res["calibration"].items()]))
    csv("horizon.csv", pd.DataFrame([{"source": g, "by": key, **b} for g, h in res["horizon"].items()
                                     for key in ("days", "km") for b in h[key]]))
    csv("connectivity.csv", pd.DataFrame([
        {"migration": mig, "source": g, **{k: x for k, x in m.items() if not isinstance(x, list)},
         "observed_lo": (m["observed_ci"] or [None, None])[0],
         "observed_hi": (m["observed_ci"] or [None, None])[1],
         "range_wide": e["range_wide"]["mc"]}
        for mig, e in res["connectivity"].items() for g, m in e["by_source"].items()]))
    csv("route_biology.csv", pd.DataFrame([{"migration": mig, "source": g, "quantity": q, **r}
                                           for mig, by in res["route_biology"].items()
                                           for g, qs in by.items() for q, r in qs.items()]))
    csv("headline.csv", pd.DataFrame(head).rename_axis("check").reset_index())
    return written


def _html(title: str, meta: list[str], table_md: str, routes_md: str, figs: list[Path],
          notes: list[str]) -> str:
    def table(md: str) -> str:
        rows = [r.strip("|").split("|") for r in md.splitlines() if not r.startswith("|---")]
        head, body = rows[0], rows[1:]
        th = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
        tds = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>"
                      for r in body)
        return f"<table><tr>{th}</tr>{tds}</table>"

    imgs = "".join(
        f'<figure><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        for p in figs)
    return ("<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;"
            "max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 7px}img{max-width:100%}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><ul>"
            + "".join(f"<li>{html.escape(m)}</li>" for m in meta) + "</ul><h2>Headline</h2>"
            + table(table_md) + "<h2>Route biology (pooled)</h2>" + table(routes_md)
            + "<h2>Figures</h2>" + imgs
            + ("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes)
               + "</ul>" if notes else "") + "</body></html>\n")


def write_report(v, out_dir: str | Path, title: str, meta: list[str]) -> Path:
    """Write validation.json, the CSV tables, figures, report.md and report.html into
    ``out_dir``; returns the path of report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = headline(v.result)
    v.result["headline"] = head
    figs = figures(v, out_dir)
    _tables(v, out_dir, head)
    write_text_atomic(out_dir / VALIDATION_JSON,
                      json.dumps(v.result, indent=2, allow_nan=False) + "\n")
    table_md, routes_md = headline_table(head), route_table(v.result)
    notes = v.result["notes"]
    md = [f"# {title}", "", *[f"- {m}" for m in meta], "", "## Headline", "", table_md, "",
          f"{OK}: within the 5 % limit for its n (KS below its critical value; coverage inside the "
          "binomial range of 95 %; model MC inside the observed bootstrap interval).", "",
          "## Route biology (pooled)", "", routes_md, "", "## Figures", "",
          *[f"![{p.stem}]({p.name})" for p in figs]]
    if notes:
        md += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    report = write_text_atomic(out_dir / "report.md", "\n".join(md) + "\n")
    write_text_atomic(out_dir / "report.html", _html(title, meta, table_md, routes_md, figs, notes))
    return report


def read_validation(run_dir: str | Path) -> dict | None:
    """A run's ``validation/validation.json``, or None when it was not validated."""
    path = Path(run_dir) / VALIDATION_DIR / VALIDATION_JSON
    return json.loads(path.read_text()) if path.exists() else None
