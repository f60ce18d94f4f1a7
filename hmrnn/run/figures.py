"""The boundary figure of each validation, logged to W&B (the figures of ``hmrnn.visualize``)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from datamodules.base import DataSetModule
from hmrnn.strips import png_strips
from hmrnn.visualize import (
    detectors_of,
    figure_title,
    handwriting_figures,
    handwriting_where,
    text_excerpt,
    text_strips,
)


class BoundaryFigures(L.Callback):
    """Log the boundary figure of a fixed validation excerpt to W&B after every validation
    (the first ``length`` symbols of the validation stream, or its first sequence), so that
    validations can be compared. Does nothing without a W&B logger or for the LSTM."""

    def __init__(self, length: int = 270) -> None:
        self.length = length

    def on_validation_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.is_hierarchical:
            return
        loggers = [lg for lg in trainer.loggers if hasattr(lg, "log_image")]
        if not loggers:
            return
        image = self.figure(trainer.datamodule, pl_module, trainer.global_step)
        for logger in loggers:
            logger.log_image(key="val/boundaries", images=[image], step=trainer.global_step)

    def figure(self, dm: DataSetModule, module: Any, step: int | None = None) -> np.ndarray:
        """The figure as an (H, W, 3) uint8 array (what wandb.Image takes: 0..255, so a float
        image in [0, 1] would show black), titled with the run and ``step``."""
        import matplotlib.image

        run = getattr(module.config, "run_name", "")
        if dm.kind == "text":
            ids, z, norms = text_excerpt(module.model, dm.tokens["valid"], 0, self.length, 0)
            text = "".join(module.hparams.vocab[i] for i in ids)
            _, interleaved = text_strips(z, norms, detectors_of(module.model))
            where = f"offset 0 · length {len(text)}"
            title = figure_title(run, "norms and boundaries", "valid", where, step)
            png = png_strips(text, interleaved, title=title)
        else:  # handwriting: the first validation sequence
            import tempfile

            points = dm.sequences["valid"][0]
            title = figure_title(run, "handwriting", "valid", handwriting_where(0, points), step)
            with tempfile.TemporaryDirectory() as tmp:
                handwriting_figures(module, points, Path(tmp), title=title)
                png = (Path(tmp) / "handwriting.png").read_bytes()
        image = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]  # floats in [0, 1]
        return np.round(image * 255).astype(np.uint8)
