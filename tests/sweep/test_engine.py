"""The sweep files against W&B's own sweep engine (the ``sweeps`` package) and this project's
config schema; the command expanded by wandb's own macro functions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hmrnn.compose import GROUPS, compose
from hmrnn.config import dotted_keys
from hmrnn.sweep import children, engine
from hmrnn.sweep.runner import Runner
from tests import helpers
from tests.sweep.tiny import SWEEP_FILES, tiny_sweep


def test_there_are_sweep_files_for_every_question() -> None:
    names = {p.stem for p in SWEEP_FILES}
    for data in ("ptb", "text8", "enwik8", "iam_ondb"):
        assert {f"{data}_ablation", f"{data}_search"} <= names
    assert {"ptb_estimators", "ptb_ablation_ddp", "ptb_ablation_small"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_sweep_file_is_valid_and_every_proposed_run_composes(path: Path, tmp_path: Path) -> None:
    config = engine.load_sweep(path)  # W&B's schema (raises on a violation)
    assert engine.schema_violations(config) == []
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
    runner = Runner(path, tmp_path, seed=0)
    for i in range(3 if config["method"] != "grid" else 100):
        values = runner.propose()
        if values is None:
            break
        expanded = engine.expand_command(config, values, f"id{i}")
        composed, _ = compose(children.train_arguments(expanded))  # every value fits the schema
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
    config = engine.load_sweep(path)
    values = {
        "model": "fixed_boundary",
        "model.fixed_periods": [2, 3],
        "optim.lr": 1e-3,
        "trainer.max_steps": 10,
    }
    command = engine.expand_command(config, values, "abc123")
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
    env = Runner(path, tmp_path / "state", 0).environment("abc123")
    helpers.run(command, env=env, watch=[tmp_path]).check_returncode()
    run_dir = children.run_dir_of(command, "abc123")
    assert run_dir == tmp_path / "runs" / "demo-fixed_boundary-abc123"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["model"]["fixed_periods"] == [2, 3]
    assert results["config"]["optim"]["lr"] == 1e-3
    assert list((run_dir / "wandb").glob("offline-run-*-abc123")), "W&B logged offline, that id"


def test_the_other_wandb_macros_expand_as_the_agent_expands_them(tmp_path: Path) -> None:
    config = {
        "program": "train.py",
        "command": ["${env}", "${interpreter}", "${program}", "${args}", "${args_json_file}"],
    }
    command = engine.expand_command(config, {"optim.lr": 0.01, "seed": 3}, "r1", tmp_path)
    assert command[:3] == ["/usr/bin/env", "python", "train.py"]
    assert command[3:5] == ["--optim.lr=0.01", "--seed=3"]
    assert json.loads(Path(command[5]).read_text()) == {"optim.lr": 0.01, "seed": 3}
