"""The benchmark script runs end to end and writes its Markdown table (tiny sizes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_throughput_script_writes_a_markdown_table(tmp_path: Path) -> None:
    out = tmp_path / "perf.md"
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "throughput.py"),
        *("--hidden", "32", "--batch", "4", "--length", "6", "--threads", "1"),
        *("--mode", "train", "eval", "--rates", "1.0", "0.5", "0.25"),
        *("--autograd", "--torch-ops", "--layer-norm", "--reference", "--memory"),
        *("--repeats", "1", "--warmup", "0"),
        *("--markdown", str(out)),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    text = out.read_text()
    assert "python benchmarks/throughput.py --hidden 32" in text  # the command, to rerun it
    assert "imposed 100%/50%/25%" in text
    rows = [line for line in text.splitlines() if line.startswith(("| train", "| eval"))]
    models = {(r.split("|")[1].strip(), r.split("|")[4].strip()) for r in rows}
    for mode in ("train", "eval"):
        for model in ("nn.LSTM", "hmlstm", "autograd", "layer_norm", "ln_lstm", "reference"):
            assert (mode, model) in models
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert float(cells[4].replace(",", "")) > 0  # chars/s
        low, high = (float(v) for v in cells[6].split("-"))
        assert 0 < low <= float(cells[5].rstrip("x")) <= high  # the median inside the spread
        if cells[0] == "train":
            assert float(cells[7]) >= 0  # peak MB measured for every training row


@pytest.mark.slow
def test_the_prepared_gpu_check_runs_on_the_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu_check.py is run on a lent GPU only: its smoke test here keeps it working
    (tiny sizes, the CPU), every part and file included."""
    data = ROOT.parent / "shared" / "data" / "ptb-char"
    command = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu"]
    command += ["--quick", "--out", str(tmp_path)] + (
        ["--data", str(data)] if data.is_dir() else []
    )
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    found = json.loads((tmp_path / "correctness.json").read_text())["max_abs_diff"]
    assert len(found) == 13 and max(max(d.values()) for d in found.values()) < 1e-9
    assert "| train |" in (tmp_path / "throughput.md").read_text()
    assert set(json.loads((tmp_path / "bf16.json").read_text())["median_seconds"]) == {
        "float32",
        "bf16_autocast",
    }
    graphed = json.loads((tmp_path / "graphs.json").read_text())["graphs"]
    assert all(g["output"] == 0 and g["gradients"] == 0 for g in graphed.values()), graphed
    skipping = json.loads((tmp_path / "copy_skipping.json").read_text())
    assert "multiply_4_rows_us" in skipping and "train_step_imposed_100_20_5_s" in skipping
    if data.is_dir():
        assert (
            "exit 0" in done.stdout.splitlines()[-1]
            and "results:" in (tmp_path / "train.log").read_text()
        )
