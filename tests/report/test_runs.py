"""Reading runs: a W&B sweep through the API; the metric a run is judged by."""

from __future__ import annotations

from hmrnn.report.runs import RunRecord, wandb_runs
from hmrnn.report.variants import group_variants, table_rows


def test_report_reads_a_wandb_sweep_through_the_api() -> None:
    class FakeRun:
        def __init__(self, name: str, model: str, bpc: float) -> None:
            self.name, self.state = name, "finished"
            self.config = {
                "config": {"model": {"name": model, "num_layers": 3}, "seed": 0},
                "parameters": 1234,
                "model": model,
            }
            self.summary = {"test/bpc": bpc, "val/bpc": bpc + 0.1, "train/chars_per_sec": 99.0}

        def scan_history(self):
            return [{"trainer/global_step": 10, "val/bpc": 2.0}]

    class FakeApi:
        def sweep(self, path: str):
            assert path == "team/project/abc"
            return type(
                "Sweep", (), {"runs": [FakeRun("r1", "hmlstm", 1.3), FakeRun("r2", "lstm", 1.4)]}
            )

    runs = wandb_runs("team/project/abc", api=FakeApi())
    rows = table_rows(group_variants(runs))
    assert [(r["variant"], r["test_mean"], r["parameters"]) for r in rows] == [
        ("model.name=hmlstm", 1.3, 1234),
        ("model.name=lstm", 1.4, 1234),
    ]
    assert runs[0].history[0]["step"] == 10 and rows[0]["best_val_mean"] == 2.0


def test_the_metric_is_the_runs_recorded_monitor_else_the_one_it_logged() -> None:
    config = {"model.name": "hmlstm", "data.name": "some_handwriting"}
    history = [{"step": 9.0, "val/ll": -900.0}, {"step": 19.0, "val/ll": -800.0}]
    recorded = RunRecord("a", config, {"test/ll": -810.0}, history, monitor="val/ll")
    assert recorded.metric == "ll" and recorded.best_val() == -800.0  # larger is better
    logged = RunRecord("b", config, {"test/ll": -810.0}, history)  # a W&B run: no monitor
    assert logged.metric == "ll" and logged.best_val() == -800.0
    text = RunRecord("c", {"data.name": "iam_ondb"}, {"test/bpc": 1.5}, monitor="val/bpc")
    assert text.metric == "bpc", "the recorded monitor, not the data set's name"
    assert RunRecord("d", {}, {"val/bpc": 1.7}).best_val() == 1.7  # no history: the last value
