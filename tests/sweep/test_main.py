"""``python -m hmrnn.sweep`` imports what it needs: not Lightning, torch or the wandb SDK."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("lightning", "torch", "torchmetrics", "wandb", "matplotlib")

CHECK = """
import runpy, sys
sys.argv = ["hmrnn.sweep", "--help"]
try:
    runpy.run_module("hmrnn.sweep", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
from hmrnn.sweep import runner  # every part of the runner, as a sweep uses it
print(" ".join(sorted(m for m in {heavy} if m in sys.modules)))
"""


def test_the_sweep_command_imports_neither_lightning_nor_torch_nor_the_wandb_sdk() -> None:
    result = subprocess.run(
        [sys.executable, "-c", CHECK.format(heavy=HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "usage: python -m hmrnn.sweep" in result.stdout
    assert result.stdout.splitlines()[-1] == "", f"imported: {result.stdout.splitlines()[-1]}"
