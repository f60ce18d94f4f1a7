"""A running run's progress lines, read from its run folder."""

from __future__ import annotations

import time
from pathlib import Path

from hmrnn.sweep import progress as sweep_progress
from hmrnn.sweep.runner import Runner
from tests.sweep.tiny import tiny_sweep


def test_progress_lines_read_step_epoch_metric_and_eta_from_the_run_folder(
    tmp_path: Path,
) -> None:
    path = tiny_sweep(tmp_path, "grid", {"seed": {"values": [0, 1]}})
    runner = Runner(path, tmp_path / "state", seed=0, progress_every=0)
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "csv").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("trainer:\n  max_epochs: 3\n  max_steps: -1\n")
    metrics = run_dir / "csv" / "metrics.csv"
    # Lightning's rows: steps count from 0; epoch 0 ends with a validation at step 9
    rows = ["epoch,step,train/loss,val/bpc,lr-Adam", ",4,,,0.1", "0,4,3.0,,", "0,9,2.9,,"]
    metrics.write_text("\n".join([*rows, "0,9,,2.5,", "1,14,2.8,,"]) + "\n")
    run = {"id": "r", "values": {"seed": 1}, "run_dir": str(run_dir), "state": "running"}
    runner.state.runs.append(run)
    runner.planned = 2

    progress = sweep_progress.read_progress(run_dir, "val/bpc", "minimize")
    assert (progress.step, progress.epoch, progress.steps_per_epoch) == (15, 1, 10)
    assert (progress.latest, progress.best) == (2.5, 2.5)
    assert sweep_progress.planned_steps(run_dir, progress) == (30, False)  # 3 epochs of 10 steps
    watch = sweep_progress.Watch(started=time.time())
    _, line = runner.progress_line(run, watch, now=watch.started + 20)
    assert (
        line
        == "[sweep] run 1/2 r: step 15/~30 (epoch 1), val/bpc 2.5000 (best 2.5000), 20s elapsed"
    )
    with metrics.open("a") as f:
        f.write("1,19,,2.1,\n1,19,2.7,,\n")
    _, line = runner.progress_line(run, watch, now=watch.started + 30)  # 5 steps in 10 s
    assert line.endswith(
        "step 20/~30 (epoch 1), val/bpc 2.1000 (best 2.1000), 30s elapsed, ETA 20s"
    )
    (run_dir / "config.yaml").write_text("trainer:\n  max_epochs: 3\n  max_steps: 20\n")
    assert sweep_progress.planned_steps(run_dir, progress) == (20, True)
    _, line = runner.progress_line(run, watch, now=watch.started + 30)
    assert "step 20/20 (epoch 1)" in line and line.endswith("training done")
