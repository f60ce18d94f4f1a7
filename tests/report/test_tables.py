"""The report's boundary table: F1 per kind of true boundary, segment length, the paper's
update count."""

from __future__ import annotations

from hmrnn.report.runs import RunRecord, agreement_scores
from hmrnn.report.tables import boundary_cells
from hmrnn.report.variants import group_variants, table_rows


def test_report_boundary_table_gives_f1_segment_length_and_the_papers_count() -> None:
    metrics = {"test/bpc": 1.0, "test/z_rate_l1": 0.25, "test/z_rate_l2": 0.05}
    metrics |= {"test/z_rate_l3": 0.0}
    for l, (u, c, f) in enumerate([(0.75, 0.0, 0.25), (0.2, 0.75, 0.05), (0.05, 0.95, 0.0)], 1):
        metrics |= {f"test/update_l{l}": u, f"test/copy_l{l}": c, f"test/flush_l{l}": f}
    config = {"model.name": "hmlstm", "model.num_layers": 3, "seed": 0}
    results = {"boundaries": {"l1/word/tol0": {"f1": 0.5}, "l1/word/tol1": {"f1": 0.9}}}
    # the delimiter convention, here only as logged test metrics (a W&B run's summary)
    results["metrics"] = {"test/word_at_delim_f1_l1_tol0": 0.25, "test/word_at_delim_f1_l1_tol1": 1}
    run = RunRecord("a", config, metrics, agreement=agreement_scores(results))
    lstm = RunRecord("b", {"model.name": "lstm", "model.num_layers": 3}, {"test/bpc": 2.0})
    rows = table_rows(group_variants([run, lstm]))
    header, cells = boundary_cells(rows)
    assert len(cells) == 1, "the LSTM has no boundaries"
    line = dict(zip(header, cells[0], strict=True))
    assert line["layer 1 F1 word (tol 0 / 1)"] == "0.50 / 0.90"
    assert line["layer 2 F1 word (tol 0 / 1)"] == "– / –"
    assert line["layer 1 F1 word_at_delim (tol 0 / 1)"] == "0.25 / 1.00"
    assert header.index("layer 1 F1 word_at_delim (tol 0 / 1)") == 2  # beside "word"
    assert line["layer 1 segment length"] == "4.0" and line["layer 2 segment length"] == "20.0"
    # 270 x (update + flush): 270, 67.5, 13.5 (rounded as printed)
    assert line["updates per 270 steps (stacked RNN: 810)"] == "270 / 68 / 14 = 351"
