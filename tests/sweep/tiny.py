"""Tiny sweeps for the runner's tests: a sweep file whose command trains a tiny model on the
synthetic data, the runner run on it as a command, and the state it leaves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests import helpers
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parents[2]
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
    result = helpers.run([*cmd, *args], watch=[path.parent])  # no total timeout: a stall fails
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def state_of(path: Path) -> dict[str, Any]:
    return json.loads((path.parent / "state" / "sweep.json").read_text())
