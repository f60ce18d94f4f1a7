"""Evaluate a trained character LM on a whole split: BPC and boundaries against the truth."""

from __future__ import annotations

import math

import numpy as np
import torch

from datamodules.stream import CharStreamDataModule
from hmrnn.core import CharLM
from hmrnn.core.analysis import boundary_scores


@torch.no_grad()
def run_split(
    model: CharLM, dm: CharStreamDataModule, split: str
) -> tuple[float, np.ndarray, np.ndarray]:
    """Run over a split with the state carried (one process, all rows).

    Returns: BPC, the boundaries (N, K) used at each stream position that was an input, and a
    mask (N,) of the positions that were inputs (the rest: dropped tail, last symbol of a row).
    """
    was_training = model.training
    model.eval()
    segments = dm.segments(split, all_rows=True)
    device = next(model.parameters()).device
    K = model.rnn.num_layers
    n = len(dm.tokens[split])
    bounds = np.zeros((n, K), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    state, nll, count = None, 0.0, 0
    for i in range(len(segments)):
        batch = segments[i].to(device)
        out = model(batch[:-1], batch[1:], state)
        state = out.state
        nll += out.loss.item() * batch[1:].numel()
        count += batch[1:].numel()
        pos = segments.positions(i).reshape(-1)
        bounds[pos] = out.boundaries.reshape(-1, K).float().cpu().numpy()
        seen[pos] = True
    model.train(was_training)
    return nll / count / math.log(2), bounds, seen


def boundary_report(
    bounds: np.ndarray,
    seen: np.ndarray,
    truth: dict[str, np.ndarray],
    tolerances: tuple[int, ...] = (0, 1),
) -> dict[str, dict]:
    """Precision / recall / F1 of each detector layer against each kind of true boundary.

    Keys: ``l{layer}/{kind}/tol{k}`` -> {precision, recall, f1, rate}.
    """
    report = {}
    for l in range(bounds.shape[1]):
        pred = torch.from_numpy(bounds[seen, l] > 0.5)
        if not pred.any() and l == bounds.shape[1] - 1:
            continue  # the top layer without a detector
        for kind, gold in truth.items():
            for tol in tolerances:
                scores = boundary_scores(pred, torch.from_numpy(gold[seen]), tol)
                report[f"l{l + 1}/{kind}/tol{tol}"] = scores
    return report
