"""Writing the report: ``report.md`` (the PNGs beside it), ``report.html`` (self-contained: the
plots embedded) and ``report.json`` (the table's numbers)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from hmrnn.config import ConfigError
from hmrnn.io import atomic_write
from hmrnn.report.plots import figures
from hmrnn.report.runs import RunRecord
from hmrnn.report.tables import boundary_cells, html_table, markdown_table
from hmrnn.report.variants import Variant, group_variants, table_rows

BOUNDARY_NOTE = (
    "Test split. F1 of each detector layer's boundaries against the data's own (word ends for "
    "text, pen-up for handwriting, ...), a boundary counting as found within 0 or 1 steps, in "
    "two conventions: 'word' takes the step that reads a word's last symbol as the true "
    "boundary (a detector gets there by predicting the delimiter), 'word_at_delim' the next "
    "step, the one that reads the delimiter (space, end of line, the '.' closing a phrase); "
    "units that end on their own symbol ('phrase', 'line', 'pen_up') have one convention. "
    "fixed_boundary with fixed_source=delimiter fires on the delimiter it has read, so its "
    "fair F1 is the 'word_at_delim' one (against 'word' each of its boundaries is one step "
    "late: a miss at tolerance 0, a hit at 1); a learned detector may follow either. Segment "
    "length: steps per boundary; updates: steps in which each layer computes (UPDATE or "
    "FLUSH) per 270 steps, bottom layer first, as the paper counts them."
)

STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{border:1px solid #bbb;padding:4px 8px;text-align:right}td:first-child,"
    "th:first-child{text-align:left}img{max-width:100%}"
)


def table_note(metric: str) -> str:
    """What the main table's columns mean."""
    note = (
        "Test: the best-validation checkpoint on the whole test split. Best val: the best "
        "validation of each run. Mean ± standard deviation over the variant's runs (seeds). "
        "Layer columns: boundary rate and UPDATE / COPY / FLUSH fractions on the test split."
    )
    if metric == "ll":
        note = note.replace("validation of", "validation log-likelihood of")
    return note


def write_report(runs: list[RunRecord], out: Path, title: str) -> dict[str, Any]:
    """Write report.md, report.html, report.json and the PNGs into ``out``; the table rows."""
    if not runs:
        raise ConfigError(f"{title}: no finished run (no results.json) to report on")
    variants = group_variants(runs)
    rows = table_rows(variants)
    pictures = figures(variants)
    for name, (_, png) in pictures.items():
        atomic_write(out / name, png)
    counts = f"{len(runs)} runs, {len(variants)} variants."
    atomic_write(out / "report.md", markdown_page(title, counts, rows, variants, pictures))
    atomic_write(out / "report.html", html_page(title, counts, rows, pictures))
    atomic_write(out / "report.json", json.dumps(rows, indent=2))
    return {"rows": rows, "files": sorted(["report.md", "report.html", "report.json", *pictures])}


def markdown_page(
    title: str,
    counts: str,
    rows: list[dict[str, Any]],
    variants: list[Variant],
    pictures: dict[str, tuple[str, bytes]],
) -> str:
    """report.md: the tables, the figures (PNG files beside it) and each variant's runs."""
    md = [f"# {title}", "", counts, "", table_note(rows[0]["metric"]), ""]
    md += [markdown_table(rows), ""]
    second = markdown_table(rows, boundary_cells)
    if second:
        md += ["## Boundaries", "", BOUNDARY_NOTE, "", second, ""]
    md += [f"![{caption}]({name})\n" for name, (caption, _) in pictures.items()]
    md += ["## Runs", ""] + [f"- {v.label}: {', '.join(r.name for r in v.runs)}" for v in variants]
    return "\n".join(md) + "\n"


def html_page(
    title: str, counts: str, rows: list[dict[str, Any]], pictures: dict[str, tuple[str, bytes]]
) -> str:
    """report.html: the tables and the figures, embedded as data URLs."""
    images = "".join(
        f'<h2>{html.escape(caption)}</h2><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        for caption, png in pictures.values()
    )
    boundaries = ""
    if boundary_cells(rows)[0]:
        boundaries = (
            f"<h2>Boundaries</h2><p>{html.escape(BOUNDARY_NOTE)}</p>"
            f"{html_table(rows, boundary_cells)}"
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{counts}</p>"
        f"<p>{html.escape(table_note(rows[0]['metric']))}</p>{html_table(rows)}"
        f"{boundaries}{images}</body></html>"
    )
