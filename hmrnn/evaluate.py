"""Evaluate a trained model on a whole split: its metrics, and for a character LM the boundaries
against the data's truth.

    python -m hmrnn.evaluate runs/<run>/checkpoints/best.ckpt [split=test] [local_dir=...] \
        [out=metrics.json]

The command runs the model's own test (or validation) pass over the whole split with the state
carried, on one device, and prints each metric; it writes nothing into the run (``out=`` writes
the metrics as JSON). A finished run is evaluated this way, never by resuming it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hmrnn.cli import COMMANDS, print_help_if_asked
from hmrnn.config import ConfigError
from hmrnn.core.analysis import boundary_scores

if TYPE_CHECKING:  # the data modules import Lightning, which --help must not wait for
    from datamodules.stream import CharStreamDataModule
    from hmrnn.core import CharLM


@torch.no_grad()
def run_split(
    model: CharLM, dm: CharStreamDataModule, split: str, max_batches: int | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Run over a split with the state carried (one process, all rows); over its first
    ``max_batches`` batches only when given (``trainer.limit_test_batches``).

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
    for i in range(len(segments) if max_batches is None else min(max_batches, len(segments))):
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

    ``truth``: kind -> (N,) bool over the stream, as ``CharStreamDataModule.boundaries`` gives
    it: ``word`` marks each word's last symbol (the end convention), ``word_at_delim`` the step
    after, which reads the delimiter (the delimiter convention, where ``fixed_boundary`` by
    delimiter fires). Keys: ``l{layer}/{kind}/tol{k}`` -> {precision, recall, f1, rate}.
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


# -------------------------------------------------------------------------------- command
SPLITS = ("test", "valid")


def main(argv: list[str] | None = None) -> dict[str, float] | None:
    """Evaluate a checkpoint on a split; its metrics (None for ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    if print_help_if_asked(argv, "hmrnn.evaluate"):
        return None
    from hmrnn.checkpoints import parse_arguments

    spec = COMMANDS["hmrnn.evaluate"]
    checkpoint, options = parse_arguments(argv, spec.defaults(), "hmrnn.evaluate")
    if options["split"] not in SPLITS:
        raise ConfigError(f"split={options['split']!r}: choose {' or '.join(SPLITS)}")
    metrics = evaluate(checkpoint, options["split"], options["local_dir"])
    width = max(map(len, metrics), default=0) + 2
    print("\n".join(f"{key:<{width}}{value:.6g}" for key, value in sorted(metrics.items())))
    if options["out"]:
        from hmrnn.io import atomic_write

        atomic_write(Path(options["out"]), json.dumps(metrics, indent=2))
    return metrics


def evaluate(checkpoint: Path, split: str, local_dir: str = "") -> dict[str, float]:
    """The metrics a checkpoint's model reaches on ``split`` ("test" or "valid"), computed by its
    own LightningModule over the whole split, one device; ConfigError when the data's
    vocabulary is not the model's."""
    import lightning as L

    from datamodules import build_datamodule
    from datamodules.stream import DataError
    from hmrnn.checkpoints import load_module
    from hmrnn.lit.noise import quiet

    module = load_module(checkpoint)
    data = module.config.data
    if local_dir:
        data = dataclasses.replace(data, local_dir=local_dir)
    dm = build_datamodule(data)
    try:
        dm.setup()
    except DataError as error:
        raise ConfigError(str(error)) from error
    vocab, current = module.hparams.get("vocab"), dm.vocabulary()
    if vocab is not None and current is not None and list(vocab) != current:
        raise ConfigError(
            f"the vocabulary of {checkpoint} ({len(vocab)} symbols) differs from the data's "
            f"({len(current)}): point local_dir= at the data the model was trained on"
        )
    quiet()
    trainer = L.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    run: Any = trainer.test if split == "test" else trainer.validate
    (metrics,) = run(module, datamodule=dm, verbose=False)
    return {key: float(value) for key, value in metrics.items()}


def cli() -> None:
    try:
        main()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
