"""Ablation report: one table of every variant, learning curves and boundary-rate plots.

    python -m hmrnn.report runs/sweeps/ptb_ablation_small    # local run folders, offline
    python -m hmrnn.report entity/project/sweep_id           # a W&B sweep (the W&B API)
    python -m hmrnn.report <source> --out report/            # default: <folder>/report, or
                                                             # ./report-<sweep_id>

Writes ``report.md`` (with PNG files beside it), ``report.html`` (self-contained: the plots are
embedded) and ``report.json`` (the table's numbers). A *variant* is a set of runs whose settings
differ only in the seed (and in names and paths); the table gives, per variant, the mean and
standard deviation over its runs of the test metric and of the best validation metric, the
parameters, training characters per second, and per layer the boundary rate and the UPDATE /
COPY / FLUSH fractions on the test split.

In parts: ``runs`` (reading run folders or a W&B sweep), ``variants`` (grouping runs, the
table's numbers), ``tables`` (Markdown and HTML tables), ``plots`` (the figures) and ``pages``
(writing the files); ``python -m hmrnn.report`` is ``__main__``.
"""

from hmrnn.report.pages import BOUNDARY_NOTE, write_report
from hmrnn.report.plots import figures, plot_png
from hmrnn.report.runs import (
    RunRecord,
    agreement_scores,
    flatten,
    local_runs,
    read_csv_history,
    wandb_runs,
)
from hmrnn.report.tables import boundary_cells, html_table, markdown_table, table_cells
from hmrnn.report.variants import Variant, group_variants, mean_std, table_rows

__all__ = [
    "BOUNDARY_NOTE",
    "RunRecord",
    "Variant",
    "agreement_scores",
    "boundary_cells",
    "figures",
    "flatten",
    "group_variants",
    "html_table",
    "local_runs",
    "markdown_table",
    "mean_std",
    "plot_png",
    "read_csv_history",
    "table_cells",
    "table_rows",
    "wandb_runs",
    "write_report",
]
