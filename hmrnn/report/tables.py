"""The report's two tables (the variants' metrics; their boundaries against the data's own) as
header and cells, written as Markdown or HTML."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

Cells = Callable[[list[dict[str, Any]]], tuple[list[str], list[list[str]]]]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None, digits: int, n: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {_fmt(std, digits)}" if n > 1 else "")


def table_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the Markdown and the HTML table."""
    metric = rows[0]["metric"] if rows else "bpc"
    digits = 1 if metric == "ll" else 3
    name = "log-likelihood / sequence" if metric == "ll" else "BPC"
    K = len(rows[0]["layers"]) if rows else 0
    header = ["variant", "runs", f"test {name}", f"best val {name}", "parameters", "chars/s"]
    header += [f"layer {l} rate · U/C/F" for l in range(1, K)]
    cells = []
    for row in rows:
        line = [
            row["variant"],
            str(len(row["runs"])),
            _pm(row["test_mean"], row["test_std"], digits, len(row["runs"])),
            _pm(row["best_val_mean"], row["best_val_std"], digits, len(row["runs"])),
            "–" if row["parameters"] is None else f"{row['parameters']:,.0f}",
            "–" if row["chars_per_sec"] is None else f"{row['chars_per_sec']:,.0f}",
        ]
        for entry in row["layers"][: K - 1]:  # the top layer has no detector
            if entry["z_rate"] is None:
                line.append("–")
            else:
                ops = "/".join(_fmt(entry[k], 2) for k in ("update", "copy", "flush"))
                line.append(f"{entry['z_rate']:.3f} · {ops}")
        cells.append(line)
    return header, cells


def boundary_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The second table: per detector layer, F1 against each kind of true boundary (tolerance
    0 / 1 steps; ``word`` and ``word_at_delim``: the two conventions, see ``BOUNDARY_NOTE``)
    and the mean segment length; the paper's updates per 270 steps."""
    hier = [r for r in rows if r["layers"] and r["layers"][0]["z_rate"] is not None]
    if not hier:
        return [], []
    K = len(hier[0]["layers"])
    kinds = sorted({k.split("/")[0] for r in hier for e in r["layers"] for k in e["f1"]})
    header = ["variant"]
    for l in range(1, K):
        header += [f"layer {l} F1 {kind} (tol 0 / 1)" for kind in kinds]
        header.append(f"layer {l} segment length")
    header.append(f"updates per 270 steps (stacked RNN: {270 * K})")
    return header, [boundary_line(row, kinds) for row in hier]


def boundary_line(row: dict[str, Any], kinds: list[str]) -> list[str]:
    """One variant's cells of the boundary table."""
    line = [row["variant"]]
    for entry in row["layers"][:-1]:  # the top layer has no detector
        for kind in kinds:
            f0, f1 = entry["f1"].get(f"{kind}/tol0"), entry["f1"].get(f"{kind}/tol1")
            line.append(f"{_fmt(f0, 2)} / {_fmt(f1, 2)}")
        length = entry["segment_length"]
        line.append("never fires" if length is None and entry["z_rate"] == 0 else _fmt(length, 1))
    counts = [e.get("updates_per_270") for e in row["layers"]]
    line.append(
        "–" if None in counts else " / ".join(f"{c:.0f}" for c in counts) + f" = {sum(counts):.0f}"
    )
    return line


def markdown_table(rows: list[dict[str, Any]], cells_of: Cells | None = None) -> str:
    header, cells = (cells_of or table_cells)(rows)
    if not header:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines)


def html_table(rows: list[dict[str, Any]], cells_of: Cells | None = None) -> str:
    header, cells = (cells_of or table_cells)(rows)
    if not header:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>" for line in cells
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
