"""Hyperband early termination from the runs' CSV logs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmrnn.sweep import hyperband
from hmrnn.sweep.runner import Runner
from tests.sweep.tiny import tiny_sweep


def test_hyperband_stops_a_run_worse_than_the_others_at_its_band(tmp_path: Path) -> None:
    path = tiny_sweep(
        tmp_path,
        "random",
        {"optim.lr": {"values": [1e-3, 2e-3]}},
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
    )
    runner = Runner(path, tmp_path / "state", seed=0)

    def record(name: str, values: list[float], state: str) -> dict[str, Any]:
        run_dir = tmp_path / name
        (run_dir / "csv").mkdir(parents=True)
        rows = ["step,val/bpc", *(f"{10 * i},{v}" for i, v in enumerate(values))]
        (run_dir / "csv" / "metrics.csv").write_text("\n".join(rows) + "\n")
        history = hyperband.read_history(run_dir, "val/bpc")
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
