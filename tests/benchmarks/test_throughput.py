"""The benchmark script runs end to end and writes its Markdown table (tiny sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
