"""benchmarks/diagnostics_cost.py runs end to end at a tiny size and times both steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_diagnostics_cost_times_both_steps_per_repeat(capsys) -> None:
    spec = importlib.util.spec_from_file_location(
        "diagnostics_cost", ROOT / "benchmarks" / "diagnostics_cost.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    times = module.main(["--hidden", "16", "--batch", "4", "--rows", "2", "--repeats", "2"])
    assert set(times) == {"training step", "diagnostics"}
    assert all(len(t) == 2 and all(x > 0 for x in t) for t in times.values())
    assert "H = 16, layer norm False, 2 repeats: training step" in capsys.readouterr().out
