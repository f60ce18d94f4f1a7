"""The hierarchy study's tools (docs/hierarchy.md): the sweep summary and where detectors fire."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import train

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location(
    "hierarchy_positions", ROOT / "benchmarks" / "hierarchy_positions.py"
)
positions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(positions)


def test_the_hierarchy_summary_reads_a_sweeps_runs(tmp_path: Path) -> None:
    """benchmarks/hierarchy_summary.py (docs/hierarchy.md's tables): one row per finished run
    with its swept settings, test numbers, updates per 270 steps and layer 2's diagnostics,
    first and last; then one row per setting over its seeds, counting those that meet issue
    18's criteria. Layer 2's phrase-level truth is the line ends where the data has no phrases
    (PTB-char)."""
    sweep = tmp_path / "sweep"
    runs = {  # id: (seed, test rates l1 / l2, F1 word tol 0, F1 phrase tol 0, BPC)
        "abc123": (1, 0.7, 0.1, 0.42, None, 1.2345),
        "def456": (2, 0.3, 0.05, 0.85, 0.6, 1.1),  # meets the criteria (line ends)
        "aaa000": (3, 0.3, 0.5, 0.9, 0.7, 1.0),  # layer 2 not sparse
    }
    for run_id, (_, r1, r2, word, phrase, bpc) in runs.items():
        run = sweep / f"demo-hmlstm-{run_id}"
        (run / "csv").mkdir(parents=True)
        kind = "line" if run_id == "def456" else "phrase"
        boundaries = {"l1/word/tol0": {"f1": word}, f"l2/{kind}/tol1": {"f1": 0.33}}
        if phrase is not None:
            boundaries[f"l2/{kind}/tol0"] = {"f1": phrase}
        metrics = {"test/bpc": bpc, "test/z_rate_l1": r1, "test/z_rate_l2": r2}
        results = {"metrics": metrics, "boundaries": boundaries}
        if run_id == "abc123":
            results["update_counts"] = {"per_layer": [270.0, 56.4, 8.6]}
        (run / "results.json").write_text(json.dumps(results))
        (run / "csv" / "metrics.csv").write_text(
            "step,diag/sz_mean_l2,diag/sz_linear_l2,val/bpc\n9,-0.5,0.9,\n19,,,2.0\n29,-4.0,0.0,\n"
        )
    (sweep / "sweep.json").write_text(
        json.dumps(
            {
                "runs": [
                    {"id": run_id, "values": {"optim.lr": 0.001, "seed": seed}}
                    for run_id, (seed, *_) in runs.items()
                ]
            }
        )
    )
    script = ROOT / "benchmarks" / "hierarchy_summary.py"
    done = subprocess.run([sys.executable, str(script), str(sweep)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert (
        "| abc123 | optim.lr=0.001, seed=1 | 1.234 | 0.70 / 0.10 | 0.42 / - | - / 0.33 | - "
        "| 270 / 56 / 9 | -0.50 / -4.00 | 0.90 / 0.00 |"
    ) in lines
    assert (
        "| def456 | optim.lr=0.001, seed=2 | 1.100 | 0.30 / 0.05 | 0.85 / - | 0.60 / 0.33 | - "
        "| - | -0.50 / -4.00 | 0.90 / 0.00 |"
    ) in lines
    assert lines[-1] == (
        "| sweep | optim.lr=0.001 | 3 | 1.111 (1.000-1.234) | 2 | 1 | 0.72 (0.42-0.90) "
        "| 0.65 (0.60-0.70) | - |"
    )
    # a folder of runs that is not a sweep (e.g. runs continued by hand): whole folder names
    plain = tmp_path / "plain"
    plain.mkdir()
    (sweep / "demo-hmlstm-abc123").rename(plain / "ptb-abc123-4ep")
    done = subprocess.run([sys.executable, str(script), str(plain)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].startswith("| ptb-abc123-4ep |  | 1.234 |")


def test_position_classes_split_words_into_first_middle_last_and_delimiters() -> None:
    classes = positions.position_classes("ab c.def", [" ", "."])
    as_text = {k: "".join("x" if m else "-" for m in v) for k, v in classes.items()}
    assert as_text == {  # a one-symbol word ("c") counts as its last symbol
        "first": "x----x--",
        "middle": "------x-",
        "last": "-x-x---x",
        "space": "--x-----",
        "'.'": "----x---",
    }
    z = np.array([[1, 0], [1, 1], [0, 0], [1, 1], [0, 1], [1, 0], [0, 0], [1, 1]], dtype=bool)
    rates = positions.firing_by_class(z, classes | {"none": np.zeros(8, dtype=bool)})
    assert rates[0] | {"none": 0} == {
        "first": 1.0,
        "middle": 0.0,
        "last": 1.0,
        "space": 0.0,
        "'.'": 0.0,
        "none": 0,
    }
    assert rates[1]["last"] == 1.0 and rates[1]["'.'"] == 1.0 and rates[1]["first"] == 0.0
    assert np.isnan(rates[1]["none"])


def test_positions_script_reads_a_run(checkpoint_run: Path) -> None:
    script = ROOT / "benchmarks" / "hierarchy_positions.py"
    done = subprocess.run(
        [sys.executable, str(script), str(checkpoint_run), "--chars", "300", "--show", "40"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| run | layer | rate | first (") and "| '.' (" in lines[0]
    assert lines[2].startswith(f"| {checkpoint_run.name} | 1 | ") and len(lines[2].split("|")) == 10
    assert lines[3].startswith(f"| {checkpoint_run.name} | 2 | ")
    assert lines[-1] == "```" and len(lines[-2]) == 40  # z2's marks under the 40 symbols
    missing = subprocess.run(
        [sys.executable, str(script), str(checkpoint_run.parent)], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no checkpoints/best.ckpt or last.ckpt" in missing.stderr


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny finished run on the synthetic corpus (tests/test_train.py's settings)."""
    out = tmp_path_factory.mktemp("positions")
    train(out, "run_name=tiny", "trainer.max_steps=5", "trainer.val_check_interval=5")
    return out / "tiny"
