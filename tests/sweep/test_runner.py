"""The offline sweep runner on real (tiny) trainings in subprocesses: SIGKILLed mid-sweep and
resumed, a bayes sweep, a failed run; the report's table against the runs' results.json."""

from __future__ import annotations

import json
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from hmrnn.report.runs import read_csv_history
from hmrnn.sweep.runner import Runner
from tests import helpers
from tests.sweep.tiny import run_sweep, state_of, tiny_sweep


def test_grid_killed_mid_sweep_resumes_without_repeating_runs_and_reports(
    tmp_path: Path,
) -> None:
    models = ["hmlstm", "fixed_boundary", "lstm"]
    path = tiny_sweep(
        tmp_path,
        "grid",
        {
            "model": {"values": models},
            "seed": {"values": [0]},
            "model.match_parameters": {"value": True},
            "trainer.max_steps": {"value": 40},
            "trainer.checkpoint_every_n_steps": {"value": 5},
        },
    )
    first, second = kill_during_the_second_run(path)
    first_results = Path(first["run_dir"]) / "results.json"
    finished_at = first_results.stat().st_mtime_ns

    result = run_sweep(path, "--progress-every", "0")
    assert f"run 2/3 {second['id']} resumed from its checkpoint" in result.stdout
    runs = state_of(path)["runs"]
    assert_sweep_output(result.stdout, runs, tmp_path / "state", started=runs[1:])
    assert [r["values"]["model"] for r in runs] == models, "no run repeated, none skipped"
    assert [r["id"] for r in runs[:2]] == [first["id"], second["id"]]
    assert all(r["state"] == "finished" for r in runs)
    assert first_results.stat().st_mtime_ns == finished_at, "the finished run was not rerun"
    assert len(list((tmp_path / "runs").iterdir())) == 3
    log = (tmp_path / "state" / "logs" / f"{second['id']}.log").read_text()
    assert "resume=" in log

    again = run_sweep(path)  # a complete grid: nothing more to do
    assert "grid is complete" in again.stdout and len(state_of(path)["runs"]) == 3
    assert_sweep_output(again.stdout, runs, tmp_path / "state", started=[])
    assert_report(tmp_path, runs, models)


def kill_during_the_second_run(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """SIGKILL the runner once its second run has saved a checkpoint, and wait for that run's
    training (which gets SIGTERM and checkpoints) to end; the first and second runs."""
    state = path.parent / "state"
    cmd = [sys.executable, "-m", "hmrnn.sweep", str(path), "--dir", str(state)]

    def second_checkpointed() -> dict[str, Any] | None:
        if not (state / "sweep.json").is_file():
            return None
        runs = state_of(path)["runs"]
        if len(runs) == 2 and (Path(runs[1]["run_dir"]) / "checkpoints/last.ckpt").exists():
            return runs[1]
        return None

    with helpers.Watched(cmd, watch=[path.parent]) as proc:
        second = proc.wait_until(second_checkpointed, "the second run's checkpoint")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = state_of(path)["runs"][0]
    assert first["state"] == "finished"
    # the orphaned training gets SIGTERM and checkpoints, then ends
    helpers.wait_for_exit(second["pid"], "the killed runner's training to end", [path.parent])
    return first, second


def assert_report(tmp_path: Path, runs: list[dict[str, Any]], models: list[str]) -> None:
    """The report's table against the runs' results.json."""
    out = tmp_path / "report"
    command = [sys.executable, "-m", "hmrnn.report", str(tmp_path / "runs"), "--out", str(out)]
    helpers.run(command, watch=[tmp_path]).check_returncode()
    rows = {row["variant"].split()[0]: row for row in json.loads((out / "report.json").read_text())}
    assert set(rows) == {f"model.name={m}" for m in models}
    for run in runs:
        results = json.loads((Path(run["run_dir"]) / "results.json").read_text())
        row = rows[f"model.name={run['values']['model']}"]
        assert row["test_mean"] == pytest.approx(results["metrics"]["test/bpc"])
        assert row["parameters"] == results["parameters"]
        assert row["chars_per_sec"] == pytest.approx(results["train_chars_per_sec"])
        assert row["best_val_mean"] == pytest.approx(results["best_val_bpc"])
        if run["values"]["model"] != "lstm":
            assert row["layers"][0]["z_rate"] == pytest.approx(results["metrics"]["test/z_rate_l1"])
    lstm, hm = rows["model.name=lstm"], rows["model.name=hmlstm"]
    assert lstm["parameters"] <= hm["parameters"] and lstm["parameters"] > 0.95 * hm["parameters"]
    markdown = (out / "report.md").read_text()
    assert f"{rows['model.name=hmlstm']['test_mean']:.3f}" in markdown
    assert "![Learning curves](learning_curves.png)" in markdown
    # the HM-LSTM's runs logged the detectors' diagnostics: per detector layer (2 of 3), its
    # dynamics, s_z's parts by source and its gradients by path
    assert "![Layer 1's detector](detector_l1.png)" in markdown
    assert "![Layer 2's s_z by source](sz_sources_l2.png)" in markdown
    assert "![Layer 2's gradients by path](gradients_l2.png)" in markdown
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 2 * 3 and "<table>" in page
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_sweep_output(
    stdout: str, runs: list[dict[str, Any]], state: Path, started: list[dict[str, Any]]
) -> None:
    """The runner said, for each run it ran, its folder and log, its progress (steps read from
    its CSV log) and how it ended; its final table holds every run's results.json metrics."""
    for run in started:
        i = next(i for i, r in enumerate(runs, 1) if r["id"] == run["id"])
        log = state / "logs" / f"{run['id']}.log"
        assert f"folder {run['run_dir']} | log {log}" in stdout
        logged = {
            int(row["step"]) + 1
            for row in read_csv_history(Path(run["run_dir"]) / "csv" / "metrics.csv")
            if "step" in row and any(k.startswith(("train/", "val/")) for k in row)
        }
        steps = re.findall(rf"run {i}/3 {run['id']}: step (\d+)/40 \(epoch \d+\)", stdout)
        assert steps and {int(s) for s in steps} <= logged, (steps, logged)
        results = json.loads((Path(run["run_dir"]) / "results.json").read_text())
        assert (
            f"run {i}/3 {run['id']} finished: test/bpc {results['metrics']['test/bpc']:.4f}, "
            f"best val/bpc {results['best_val_bpc']:.4f}"
        ) in stdout
    lines = stdout.splitlines()
    table = lines[next(i for i, x in enumerate(lines) if x.startswith("run ") and "status" in x) :]
    assert re.split(r"\s{2,}", table[0]) == [
        "run", "parameters", "status", "best val/bpc", "test/bpc", "wall"
    ]  # fmt: skip
    assert len(table) == 1 + len(runs)
    for run, line in zip(runs, table[1:], strict=True):
        results = json.loads((Path(run["run_dir"]) / "results.json").read_text())
        name, parameters, status, best, test, _ = re.split(r"\s{2,}", line)
        assert (name, parameters, status) == (
            Path(run["run_dir"]).name,
            f"model={run['values']['model']}",
            "finished",
        )
        assert float(best) == pytest.approx(results["best_val_bpc"], abs=5e-5)
        assert float(test) == pytest.approx(results["metrics"]["test/bpc"], abs=5e-5)


def test_bayes_sweep_proposes_from_the_finished_runs(tmp_path: Path) -> None:
    path = tiny_sweep(
        tmp_path,
        "bayes",
        {
            "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "trainer.max_steps": {"value": 20},
        },
    )
    run_sweep(path, "--count", "2")
    runs = state_of(path)["runs"]
    assert len(runs) == 2 and all(r["state"] == "finished" for r in runs)
    lrs = [r["values"]["optim.lr"] for r in runs]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs) and lrs[0] != lrs[1]
    assert all("val/bpc" in r["summary"] and r["history"] for r in runs)
    run_sweep(path, "--count", "2")  # already holds 2: nothing is run again
    assert state_of(path)["runs"] == runs
    # the proposal is reproducible: the same seed and runs give the same next run
    runner = Runner(path, tmp_path / "state", seed=0)
    assert runner.propose() == runner.propose()


def test_a_failed_run_is_reported_with_its_exit_code_and_log_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_sweep(tmp_path, "grid", {"seed": {"values": [0]}})
    runner = Runner(path, tmp_path / "state", seed=0, progress_every=0)
    runner.planned = 1
    run = {"id": "f1", "values": {"seed": 0}, "run_dir": str(tmp_path / "none"), "state": "running"}
    runner.state.runs.append(run)
    # a stand-in for a training that fails before it logs a step
    crash = "print('loading data'); raise SystemExit('error: data.path /nowhere does not exist')"
    runner.finish(run, runner.launch(run, [sys.executable, "-c", crash]))
    out = capsys.readouterr().out
    log = tmp_path / "state" / "logs" / "f1.log"
    assert "run 1/1 f1 failed with exit code 1 before its first logged step" in out
    assert f"the last lines of {log}:" in out
    tail = out[out.index("the last lines of") :].splitlines()[1:]
    assert tail[-2:] == [
        "[sweep]   | loading data",
        "[sweep]   | error: data.path /nowhere does not exist",
    ]
    assert state_of(path)["runs"][0]["state"] == "failed"
    table = runner.table().splitlines()
    assert re.split(r"\s{2,}", table[1])[:3] == ["none", "seed=0", "failed (exit 1)"]
