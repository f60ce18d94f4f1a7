"""LitHandwriting: the handwriting model (HM-LSTM + mixture density head) on IAM-OnDB.

Each batch holds whole, padded sequences (no state carried between batches). The loss is the
mean negative log-likelihood per real point; the metric (model.md §3) is the average
log-likelihood per sequence in the normalised space, summed over every sequence of every rank.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from hmrnn.core.handwriting import HandwritingModel
from hmrnn.lit.base import SPLIT_NAMES, LitBase, fixed_boundaries, rnn_options
from hmrnn.lit.metrics import SequenceLogLikelihood


class LitHandwriting(LitBase):
    """Args: config (the run's Config as a dict); mean, std: the dx/dy normalisation (kept in
    checkpoints so samples can be drawn in pen units)."""

    def __init__(
        self,
        config: dict[str, Any],
        mean: list[float] | None = None,
        std: list[float] | None = None,
    ) -> None:
        super().__init__(config)
        self.save_hyperparameters()
        m = self.config.model
        self.model = HandwritingModel(
            m.hidden_size,
            m.num_layers,
            m.output_size,
            cell=m.cell,
            fixed=fixed_boundaries(self.config),
            **rnn_options(self.config),
        )
        self.set_truth_kinds(["pen_up"])  # a stroke ends at the point with the pen lifted
        self.ll_metrics = torch.nn.ModuleDict(
            {f"{s}_": SequenceLogLikelihood() for s in SPLIT_NAMES}
        )

    def ll(self, split: str) -> SequenceLogLikelihood:
        return self.ll_metrics[f"{split}_"]  # type: ignore[return-value]

    def window_metrics(self) -> dict[str, Metric]:
        return {**super().window_metrics(), "ll": self.ll("train")}

    def _step(self, split: str, batch: tuple[Tensor, ...]) -> Tensor:
        inputs, targets, mask, _ = batch
        out = self.model(inputs, targets, mask)
        self.ll(split).update(out.sequence_ll)
        self.stats(split).update(out.boundaries, None, mask)
        agreement = self.agreement(split)
        if agreement is not None:
            agreement.update(out.boundaries, {"pen_up": inputs[..., 2] > 0.5}, mask)
        return -out.point_ll.sum() / mask.sum().clamp_min(1)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        loss = self._step("train", batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=int(batch[2].sum()))
        if self.training_log_due():
            self.log("train/ll", self.ll("train").compute(), prog_bar=True, rank_zero_only=True)
            self.ll("train").reset()
            self.log_stats("train", rank_zero_only=True)
            self.log_slope()
        return loss

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._step("test", batch)

    def on_train_epoch_start(self) -> None:
        self.ll("train").reset()
        self.stats("train").reset()

    def on_validation_epoch_end(self) -> None:
        ll = self.ll("val").compute()
        self.ll("val").reset()
        self.log("val/ll", ll, prog_bar=True)
        self.step_plateau(-float(ll))  # higher likelihood is better
        self.log_stats("val")

    def on_test_epoch_end(self) -> None:
        self.log("test/ll", self.ll("test").compute())
        self.ll("test").reset()
        self.log_stats("test")
