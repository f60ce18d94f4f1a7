"""LitCharLM: the character language model as a LightningModule, with truncated BPTT.

The recurrent state is carried across the batches of a contiguous stream (one per split) and
detached every batch; the training state resets at each epoch start, validation and test states at
the start of each pass. Metrics are sums reduced over ranks (exact under DDP with unequal shards).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from hmrnn.config import Config
from hmrnn.core import CharLM, HMLSTMState
from hmrnn.core.analysis import true_boundaries, truth_kinds
from hmrnn.core.diagnostics import boundary_diagnostics
from hmrnn.core.fixed import FixedState
from hmrnn.lit.base import SPLIT_NAMES, LitBase, detach_state, fixed_boundaries, rnn_options
from hmrnn.lit.metrics import BitsPerChar


def build_model(config: Config, vocab_size: int, delimiters: list[int] | None = None) -> CharLM:
    """The network a configuration describes (``delimiters``: the data's word-separator ids,
    which ``model=fixed_boundary`` with ``fixed_source=delimiter`` counts)."""
    m = config.model
    return CharLM(
        vocab_size,
        m.hidden_size,
        m.num_layers,
        m.embedding_dim,
        m.output_size,
        cell=m.cell,
        fixed=fixed_boundaries(config),
        delimiters=delimiters or [],
        **rnn_options(config),
    )


class LitCharLM(LitBase):
    """Character LM training: Adam, clipping (by the Trainer), plateau schedule, BPC metrics.

    Args:
        config: the run's :class:`Config` as a plain dict (so checkpoints rebuild the model).
        vocab_size: V.
        vocab: the symbols in id order (kept in checkpoints for decoding).
        delimiters: ids of the data's word separators (for ``model=fixed_boundary`` and the
            true boundaries).
        truth_rules: kind -> [before ids, at ids] of the data's true boundaries
            (``CharStreamDataModule.truth_rules``), measured against every validation and test
            in both conventions (``word`` and ``word_at_delim``, see
            :func:`~hmrnn.core.analysis.truth_kinds`).
    """

    def __init__(
        self,
        config: dict[str, Any],
        vocab_size: int,
        vocab: list[str] | None = None,
        delimiters: list[int] | None = None,
        truth_rules: dict[str, list[list[int]]] | None = None,
    ) -> None:
        super().__init__(config)
        self.save_hyperparameters()
        self.model = build_model(self.config, vocab_size, delimiters)
        self.delimiters = list(delimiters or [])
        self.truth_rules = {k: (list(b), list(a)) for k, (b, a) in (truth_rules or {}).items()}
        self.set_truth_kinds(truth_kinds(self.truth_rules))
        self.bpc_metrics = torch.nn.ModuleDict({f"{s}_": BitsPerChar() for s in SPLIT_NAMES})
        self.carried: dict[str, HMLSTMState | FixedState | None] = dict.fromkeys(SPLIT_NAMES)
        # each split's last input (B,), x_{-1} of the next batch: the delimiter convention of
        # the true boundaries looks one step back
        self.carried_input: dict[str, Tensor | None] = dict.fromkeys(SPLIT_NAMES)

    def bpc(self, split: str) -> BitsPerChar:
        return self.bpc_metrics[f"{split}_"]  # type: ignore[return-value]

    def window_metrics(self) -> dict[str, Metric]:
        return {**super().window_metrics(), "bpc": self.bpc("train")}

    # ----------------------------------------------------------------------------- steps
    def _step(self, split: str, batch: Tensor) -> Tensor:
        tokens, targets = batch[:-1], batch[1:]  # (T, B)
        state = self.carried[split]
        if state is not None and state.h.size(1) != tokens.size(1):
            state = None  # a different batch size (e.g. a sanity check): start afresh
        elif state is not None and state.h.device != tokens.device:  # restored from a checkpoint
            state = type(state)(*(x.to(tokens.device) for x in state))
        out = self.model(tokens, targets, state)
        z0 = None if state is None else state.z
        self.carried[split] = detach_state(out.state)
        count = targets.numel()
        self.bpc(split).update(out.loss, count)
        if self.is_hierarchical:
            self.stats(split).update(out.boundaries, z0)
            agreement = self.agreement(split)
            if agreement is not None:
                previous = None if state is None else self.carried_input[split]
                truth = true_boundaries(
                    tokens, targets, self.truth_rules, self.delimiters, previous
                )
                agreement.update(out.boundaries, truth)
                self.carried_input[split] = tokens[-1]
        loss = out.loss
        if split == "train":
            loss = loss + self._regularizer(out.boundaries)
        return loss

    def _regularizer(self, boundaries: Tensor) -> Tensor:
        reg = self.config.regularizer
        if reg.weight <= 0 or not self.is_hierarchical:
            return boundaries.new_zeros(())
        rates = boundaries[..., : len(reg.target_rates)].mean((0, 1))
        target = torch.tensor(reg.target_rates, dtype=rates.dtype, device=rates.device)
        return reg.weight * (rates - target).pow(2).sum()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        before = self.carried["train"]
        loss = self._step("train", batch)
        B, T = batch.shape[1], batch.shape[0] - 1
        self.log("train/loss", loss, prog_bar=True, batch_size=B * T)
        if self.training_log_due():
            self.log("train/bpc", self.bpc("train").compute(), prog_bar=True, rank_zero_only=True)
            self.bpc("train").reset()
            self.log_stats("train", rank_zero_only=True)
            self.log_slope()
            self.log_diagnostics(batch, before)
        return loss

    def log_diagnostics(self, batch: Tensor, state: HMLSTMState | FixedState | None) -> None:
        """hmrnn.core.diagnostics on the first ``trainer.boundary_diagnostics`` sequences of
        the batch just trained, from the state it started from (rank 0's rows)."""
        rows = min(self.config.trainer.boundary_diagnostics, batch.size(1))
        rnn = self.model.rnn
        if rows <= 0 or not self.is_hierarchical or not hasattr(rnn, "tapped"):
            return
        tokens = batch[:, :rows]
        if state is not None and state.h.size(1) == batch.size(1):
            state = type(state)(*(x[:, :rows].to(tokens.device) for x in state))
        else:
            state = None
        found = boundary_diagnostics(rnn, lambda: self.model(tokens[:-1], tokens[1:], state).loss)
        self.log_dict({f"diag/{k}": v for k, v in found.items()}, rank_zero_only=True)

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step("test", batch)

    # ------------------------------------------------------------------------ epoch edges
    def on_train_epoch_start(self) -> None:  # not called when a run resumes mid-epoch
        self.carried["train"] = None
        self.bpc("train").reset()
        self.stats("train").reset()

    def on_validation_epoch_start(self) -> None:
        self.carried["val"] = None

    def on_validation_epoch_end(self) -> None:
        bpc = self.bpc("val").compute()
        self.bpc("val").reset()
        self.log("val/bpc", bpc, prog_bar=True)
        self.log("val/loss", bpc * math.log(2))  # nats per symbol
        self.step_plateau(float(bpc))
        self.log_stats("val")

    def on_test_epoch_start(self) -> None:
        self.carried["test"] = None

    def on_test_epoch_end(self) -> None:
        self.log("test/bpc", self.bpc("test").compute())
        self.bpc("test").reset()
        self.log_stats("test")

    # ------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The carried training state of the whole batch (under DDP every rank's rows, gathered
        in rank order: each rank holds a contiguous block), as plain tensors."""
        super().on_save_checkpoint(checkpoint)
        state = self.carried["train"]
        trainer = self._trainer
        if state is not None and trainer is not None and trainer.world_size > 1:  # collective
            state = type(state)(*(torch.cat(self.all_gather(x).unbind(0), dim=1) for x in state))
        checkpoint["carried_train_state"] = None if state is None else dict(state._asdict())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("carried_train_state")
        if state is None:
            return
        trainer = self._trainer
        if trainer is not None and trainer.world_size > 1:  # this rank's block of rows
            rank, world = trainer.global_rank, trainer.world_size
            state = {k: v.chunk(world, dim=1)[rank] for k, v in state.items()}
        self.carried["train"] = (FixedState if "phase" in state else HMLSTMState)(**state)
