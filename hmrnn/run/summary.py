"""The end of a run: ``results.json`` (metrics, boundaries against the data's truth, the paper's
update count, provenance) and the summary printed after it."""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from datamodules.base import DataSetModule
from hmrnn.config import Config
from hmrnn.evaluate import boundary_report, run_split
from hmrnn.lit.module import LitCharLM


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def summarise(
    config: Config,
    module: LitCharLM,
    dm: DataSetModule,
    trainer: L.Trainer,
    parts: dict[str, Any],
    metrics: dict[str, float],
    started: float,
    run_dir: Path,
) -> dict[str, Any]:
    """results.json's content: metrics, reference rates, boundaries, config, provenance (paths
    relative to ``run_dir``, so a moved run folder stays valid)."""
    best = parts["checkpoint"].best_model_score
    best_path = parts["checkpoint"].best_model_path
    monitor = parts["checkpoint"].monitor  # val/bpc, or val/ll for handwriting
    results: dict[str, Any] = {
        "run_name": config.run_name,
        "metrics": metrics,
        "monitor": monitor,
        "best_" + monitor.replace("/", "_"): None if best is None else float(best),
        "best_checkpoint": os.path.relpath(best_path, run_dir) if best_path else "",
        "parameters": module.num_parameters(),
        "train_chars_per_sec": parts["throughput"].mean_chars_per_sec,
        "global_step": trainer.global_step,
        "world_size": trainer.world_size,
        "epochs": trainer.current_epoch,
        "wall_seconds": time.time() - started,
        "git_commit": git_commit(),
        "hardware": hardware(),
        "config": dataclasses.asdict(config),
    }
    rates = dm.reference_rates()
    if rates:
        results["reference_rates"] = rates
    counts = update_counts(metrics, config.model.num_layers)
    if counts is not None:
        results["update_counts"] = counts
    if config.test and config.model.spec.hierarchical:
        results |= test_boundaries(module, dm, trainer)
    return results


def test_boundaries(module: LitCharLM, dm: DataSetModule, trainer: L.Trainer) -> dict[str, Any]:
    """The tested model's boundaries on the test split (as many batches as the test ran, see
    ``trainer.limit_test_batches``) against the data's truth, in one process: the BPC of that
    pass, precision / recall / F1 per layer and kind, and each detector's firing rate. Empty
    for data without true boundaries."""
    truth = dm.boundaries("test")
    if not truth:
        return {}
    tested = [int(n) for n in trainer.num_test_batches if math.isfinite(n)]
    bpc, bounds, seen = run_split(module.model, dm, "test", tested[0] if tested else None)
    rnn = module.model.rnn  # the top layer has no detector by default: no rate to show
    detectors = sum(rnn.has_detector(l) for l in range(rnn.num_layers))
    return {
        "test_bpc_one_process": bpc,
        "boundaries": boundary_report(bounds, seen, truth),
        "boundary_rates": bounds[seen].mean(0)[:detectors].tolist(),
    }


def update_counts(metrics: dict[str, float], K: int, steps: int = 270) -> dict[str, Any] | None:
    """The paper's count (model.md §7): layer updates (UPDATE or FLUSH: the layer computes)
    per ``steps`` steps of test text, against a plain stacked RNN's ``K * steps``; from the test
    split's operation fractions. None without them (the LSTM, or no test)."""
    if f"test/update_l{K}" not in metrics:
        return None
    per_layer = [
        steps * (metrics[f"test/update_l{l}"] + metrics[f"test/flush_l{l}"])
        for l in range(1, K + 1)
    ]
    return {
        "steps": steps,
        "per_layer": per_layer,
        "total": sum(per_layer),
        "stacked_rnn": K * steps,
    }


def print_summary(results: dict[str, Any], run_dir: Path) -> None:
    """The run's numbers, where its files are, and the commands that look into its model."""
    m = results["metrics"]
    lines = [
        "",
        f"run {results['run_name']}: {results['parameters']:,} parameters, "
        f"{results['train_chars_per_sec']:,.0f} chars/s, {results['wall_seconds']:.0f} s",
    ]
    for key in ("test/bpc", "val/bpc", "test/ll", "val/ll"):
        if key in m:
            lines.append(f"  {key:<28} {m[key]:.4f}")
    for name, value in results.get("reference_rates", {}).items():
        lines.append(f"  {name:<28} {value:.4f}")
    if "update_counts" in results:
        c = results["update_counts"]
        layers = " / ".join(f"{n:.0f}" for n in c["per_layer"])
        lines.append(
            f"  updates per {c['steps']} steps      {layers} (total {c['total']:.0f}; "
            f"a stacked RNN {c['stacked_rnn']})"
        )
    if "boundary_rates" in results:
        rates = ", ".join(f"l{i + 1} {r:.3f}" for i, r in enumerate(results["boundary_rates"]))
        lines.append(f"  boundary rates               {rates}")
        lines.append("  boundaries vs truth          precision  recall     F1")
        lines.append(
            "    (word: true at a word's last symbol; word_at_delim: at the step reading the "
            "delimiter, where fixed_boundary fires)"
        )
        for key, s in results["boundaries"].items():
            lines.append(f"    {key:<26} {s['precision']:9.3f} {s['recall']:7.3f} {s['f1']:6.3f}")
    best = run_dir / results["best_checkpoint"] if results["best_checkpoint"] else None
    lines += ["", f"results: {run_dir / 'results.json'}"]
    if best is not None:
        lines += [f"best model: {best}", "next:"]
        if "boundary_rates" in results:
            lines.append(f"  python -m hmrnn.visualize {best}   # its boundaries, as figures")
        lines += [
            f"  python -m hmrnn.generate {best} length=300   # samples",
            f"  python -m hmrnn.evaluate {best} split=valid   # metrics on a split",
        ]
    print("\n".join(lines), flush=True)
