"""W&B sweep files, the offline sweep runner and the ablation report.

The sweep files are checked against W&B's own sweep engine (the ``sweeps`` package) and this
project's config schema; the runner runs real (tiny) trainings on the synthetic data in
subprocesses, is SIGKILLed mid-sweep and resumed; the report's table is checked against the runs'
results.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hmrnn import report, sweep
from hmrnn.compose import GROUPS, compose
from hmrnn.config import dotted_keys
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))


def tiny_sweep(tmp: Path, method: str, parameters: dict[str, Any], **extra: Any) -> Path:
    """A sweep file whose command trains a tiny model on the synthetic data into tmp/runs."""
    fixed = [a for a in TINY if not a.startswith("trainer.val_check_interval")]
    config = {
        "name": f"tiny_{method}",
        "program": "hmrnn.train",
        "method": method,
        "metric": {"name": "val/bpc", "goal": "minimize"},
        "parameters": parameters,
        "command": [
            "${env}",
            "${interpreter}",
            "-m",
            "hmrnn.train",
            *fixed,
            "trainer.val_check_interval=10",
            f"out_dir={tmp / 'runs'}",
            "${args_no_hyphens}",
        ],
        **extra,
    }
    path = tmp / f"{method}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_sweep(path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "hmrnn.sweep", str(path), "--dir", str(path.parent / "state")]
    result = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def state_of(path: Path) -> dict[str, Any]:
    return json.loads((path.parent / "state" / "sweep.json").read_text())


# ------------------------------------------------------------------------ the sweep files
def test_there_are_sweep_files_for_every_question() -> None:
    names = {p.stem for p in SWEEP_FILES}
    for data in ("ptb", "text8", "enwik8", "iam_ondb"):
        assert {f"{data}_ablation", f"{data}_search"} <= names
    assert {"ptb_estimators", "ptb_ablation_ddp", "ptb_ablation_small"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_is_valid_and_every_proposed_run_composes(path: Path, tmp_path: Path) -> None:
    config = sweep.load_sweep(path)  # W&B's schema (raises on a violation)
    assert sweep.schema_violations(config) == []
    keys = set(dotted_keys()) | set(GROUPS)
    assert set(config["parameters"]) <= keys, set(config["parameters"]) - keys
    command = config["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "hmrnn.train"]
    assert command[-1] == "${args_no_hyphens}"
    goal = config["metric"]
    iam = "iam_ondb" in path.stem
    assert goal == (
        {"name": "val/ll", "goal": "maximize"} if iam else {"name": "val/bpc", "goal": "minimize"}
    )
    if config["method"] != "grid":
        assert config["early_terminate"]["type"] == "hyperband"
    else:
        assert "early_terminate" not in config, "a grid of seeds is a comparison: never cut it"
    runner = sweep.Runner(path, tmp_path, seed=0)
    for i in range(3 if config["method"] != "grid" else 100):
        values = runner.propose()
        if values is None:
            break
        expanded = sweep.expand_command(config, values, f"id{i}")
        composed, _ = compose(sweep.train_arguments(expanded))  # every value fits the schema
        for key, value in values.items():
            got = composed.model.name if key == "model" else _get(composed, key)
            assert got == value, key
        runner.state.runs.append(
            {"id": f"id{i}", "values": values, "state": "finished", "summary": {}, "history": []}
        )
    if "ddp" in path.stem:
        assert composed.trainer.strategy == "ddp" and composed.trainer.devices > 1


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def test_a_file_that_wandb_would_reject_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: grdi\nparameters:\n  seed:\n    values: [0]\n")
    result = subprocess.run(
        [sys.executable, "-m", "hmrnn.sweep", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "not a valid W&B sweep" in result.stderr
    assert "grdi" in result.stderr


def test_the_command_is_expanded_by_wandbs_own_macros_and_runs(tmp_path: Path) -> None:
    from wandb.sdk.launch.sweeps import utils as wandb_sweep_utils

    path = tiny_sweep(tmp_path, "grid", {"model": {"values": ["fixed_boundary"]}})
    config = sweep.load_sweep(path)
    values = {
        "model": "fixed_boundary",
        "model.fixed_periods": [2, 3],
        "optim.lr": 1e-3,
        "trainer.max_steps": 10,
    }
    command = sweep.expand_command(config, values, "abc123")
    wandb_args = wandb_sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in values.items()}}
    )["args_no_hyphens"]
    assert wandb_args == [
        "model=fixed_boundary",
        "model.fixed_periods=[2, 3]",
        "optim.lr=0.001",
        "trainer.max_steps=10",
    ]
    assert command[:4] == ["/usr/bin/env", "python", "-m", "hmrnn.train"]
    assert command[-4:] == wandb_args
    env = sweep.Runner(path, tmp_path / "state", 0).environment("abc123")
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    run_dir = sweep.run_dir_of(command, "abc123")
    assert run_dir == tmp_path / "runs" / "demo-fixed_boundary-abc123"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["model"]["fixed_periods"] == [2, 3]
    assert results["config"]["optim"]["lr"] == 1e-3
    assert list((run_dir / "wandb").glob("offline-run-*-abc123")), "W&B logged offline, that id"


# ------------------------------------------------------------------------------- runner
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
    cmd = [sys.executable, "-m", "hmrnn.sweep", str(path), "--dir", str(tmp_path / "state")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    second = None
    while second is None:  # wait until the second run has saved a checkpoint
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        assert time.time() < deadline, "the sweep made no progress"
        time.sleep(0.5)
        if (tmp_path / "state" / "sweep.json").is_file():
            runs = state_of(path)["runs"]
            if len(runs) == 2 and (Path(runs[1]["run_dir"]) / "checkpoints/last.ckpt").exists():
                second = runs[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = state_of(path)["runs"][0]
    assert first["state"] == "finished"
    first_results = Path(first["run_dir"]) / "results.json"
    finished_at = first_results.stat().st_mtime_ns
    deadline = time.time() + 120  # the orphaned training gets SIGTERM and checkpoints, then ends
    while sweep._alive(second["pid"]):
        assert time.time() < deadline, "the killed runner's training kept running"
        time.sleep(0.5)

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

    # the report's table against the runs' results.json
    out = tmp_path / "report"
    subprocess.run(
        [sys.executable, "-m", "hmrnn.report", str(tmp_path / "runs"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
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
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
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
            for row in report.read_csv_history(Path(run["run_dir"]) / "csv" / "metrics.csv")
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
    runner = sweep.Runner(path, tmp_path / "state", seed=0)
    assert runner.propose() == runner.propose()


def test_hyperband_stops_a_run_worse_than_the_others_at_its_band(tmp_path: Path) -> None:
    path = tiny_sweep(
        tmp_path,
        "random",
        {"optim.lr": {"values": [1e-3, 2e-3]}},
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
    )
    runner = sweep.Runner(path, tmp_path / "state", seed=0)

    def record(name: str, values: list[float], state: str) -> dict[str, Any]:
        run_dir = tmp_path / name
        (run_dir / "csv").mkdir(parents=True)
        rows = ["step,val/bpc", *(f"{10 * i},{v}" for i, v in enumerate(values))]
        (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
        history = sweep.read_history(run_dir, "val/bpc")
        return {
            "id": name,
            "values": {},
            "state": state,
            "run_dir": str(run_dir),
            "history": history,
        }

    runner.state.runs += [
        record("a", [3.0, 2.5, 2.2, 2.0], "finished"),
        record("b", [3.0, 2.4, 2.1, 1.9], "finished"),
        record("bad", [4.0, 3.9, 3.8], "running"),
        record("good", [2.9, 2.3, 2.0], "running"),
    ]
    assert runner.should_stop(runner.state.runs[2])
    assert not runner.should_stop(runner.state.runs[3])


def test_progress_lines_read_step_epoch_metric_and_eta_from_the_run_folder(
    tmp_path: Path,
) -> None:
    path = tiny_sweep(tmp_path, "grid", {"seed": {"values": [0, 1]}})
    runner = sweep.Runner(path, tmp_path / "state", seed=0, progress_every=0)
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

    progress = sweep.read_progress(run_dir, "val/bpc", "minimize")
    assert (progress.step, progress.epoch, progress.steps_per_epoch) == (15, 1, 10)
    assert (progress.latest, progress.best) == (2.5, 2.5)
    assert sweep.planned_steps(run_dir, progress) == (30, False)  # 3 epochs of 10 steps
    watch = sweep.Watch(started=time.time())
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
    assert sweep.planned_steps(run_dir, progress) == (20, True)
    _, line = runner.progress_line(run, watch, now=watch.started + 30)
    assert "step 20/20 (epoch 1)" in line and line.endswith("training done")


def test_a_failed_run_is_reported_with_its_exit_code_and_log_tail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tiny_sweep(tmp_path, "grid", {"seed": {"values": [0]}})
    runner = sweep.Runner(path, tmp_path / "state", seed=0, progress_every=0)
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


def test_report_groups_seeds_into_variants_with_mean_and_spread() -> None:
    def run(name: str, model: str, seed: int, bpc: float) -> report.RunRecord:
        config = {"model.name": model, "seed": seed, "model.num_layers": 3, "run_name": name}
        history = [{"step": 9.0, "val/bpc": bpc + 0.5}, {"step": 19.0, "val/bpc": bpc + 0.1}]
        return report.RunRecord(name, config, {"test/bpc": bpc}, history, 100, 10.0)

    runs = [run("a", "hmlstm", 0, 1.0), run("b", "hmlstm", 1, 1.2), run("c", "lstm", 0, 1.5)]
    rows = report.table_rows(report.group_variants(runs))
    assert [r["variant"] for r in rows] == ["model.name=hmlstm", "model.name=lstm"]
    assert rows[0]["test_mean"] == pytest.approx(1.1)
    assert rows[0]["test_std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 1.0, 1.2
    assert rows[0]["best_val_mean"] == pytest.approx(1.2)
    assert rows[1]["test_std"] == 0.0 and rows[0]["seeds"] == [0, 1]
    assert "1.100 ± 0.141" in report.markdown_table(rows)


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

    runs = report.wandb_runs("team/project/abc", api=FakeApi())
    rows = report.table_rows(report.group_variants(runs))
    assert [(r["variant"], r["test_mean"], r["parameters"]) for r in rows] == [
        ("model.name=hmlstm", 1.3, 1234),
        ("model.name=lstm", 1.4, 1234),
    ]
    assert runs[0].history[0]["step"] == 10 and rows[0]["best_val_mean"] == 2.0


def test_report_of_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hmrnn.report", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no finished run" in result.stderr


@pytest.fixture(autouse=True)
def _no_wandb_mode_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.environ.pop("HMRNN_RUN_NAME", None)


def test_report_boundary_table_gives_f1_segment_length_and_the_papers_count() -> None:
    metrics = {"test/bpc": 1.0, "test/z_rate_l1": 0.25, "test/z_rate_l2": 0.05}
    metrics |= {"test/z_rate_l3": 0.0}
    for l, (u, c, f) in enumerate([(0.75, 0.0, 0.25), (0.2, 0.75, 0.05), (0.05, 0.95, 0.0)], 1):
        metrics |= {f"test/update_l{l}": u, f"test/copy_l{l}": c, f"test/flush_l{l}": f}
    config = {"model.name": "hmlstm", "model.num_layers": 3, "seed": 0}
    results = {"boundaries": {"l1/word/tol0": {"f1": 0.5}, "l1/word/tol1": {"f1": 0.9}}}
    # the delimiter convention, here only as logged test metrics (a W&B run's summary)
    results["metrics"] = {"test/word_at_delim_f1_l1_tol0": 0.25, "test/word_at_delim_f1_l1_tol1": 1}
    run = report.RunRecord("a", config, metrics, agreement=report.agreement_scores(results))
    lstm = report.RunRecord("b", {"model.name": "lstm", "model.num_layers": 3}, {"test/bpc": 2.0})
    rows = report.table_rows(report.group_variants([run, lstm]))
    header, cells = report.boundary_cells(rows)
    assert len(cells) == 1, "the LSTM has no boundaries"
    line = dict(zip(header, cells[0], strict=True))
    assert line["layer 1 F1 word (tol 0 / 1)"] == "0.50 / 0.90"
    assert line["layer 2 F1 word (tol 0 / 1)"] == "– / –"
    assert line["layer 1 F1 word_at_delim (tol 0 / 1)"] == "0.25 / 1.00"
    assert header.index("layer 1 F1 word_at_delim (tol 0 / 1)") == 2  # beside "word"
    assert line["layer 1 segment length"] == "4.0" and line["layer 2 segment length"] == "20.0"
    # 270 x (update + flush): 270, 67.5, 13.5 (rounded as printed)
    assert line["updates per 270 steps (stacked RNN: 810)"] == "270 / 68 / 14 = 351"


def test_the_other_wandb_macros_expand_as_the_agent_expands_them(tmp_path: Path) -> None:
    config = {
        "program": "train.py",
        "command": ["${env}", "${interpreter}", "${program}", "${args}", "${args_json_file}"],
    }
    command = sweep.expand_command(config, {"optim.lr": 0.01, "seed": 3}, "r1", tmp_path)
    assert command[:3] == ["/usr/bin/env", "python", "train.py"]
    assert command[3:5] == ["--optim.lr=0.01", "--seed=3"]
    assert json.loads(Path(command[5]).read_text()) == {"optim.lr": 0.01, "seed": 3}
