"""LitCharLM: the character language model as a LightningModule, with truncated BPTT.

The recurrent state is carried across the batches of a contiguous stream (one per split) and
detached every batch; the training state resets at each epoch start, validation and test states at
the start of each pass. Metrics are sums reduced over ranks (exact under DDP with unequal shards).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from hmrnn.config import Config, from_dict
from hmrnn.core import CharLM, HMLSTMState, count_parameters
from hmrnn.lit.metrics import BitsPerChar, BoundaryStats

SPLIT_NAMES = ("train", "val", "test")  # each carries its own recurrent state and metrics


def build_model(config: Config, vocab_size: int) -> CharLM:
    """The network a configuration describes."""
    m = config.model
    options: dict[str, Any] = {"layer_norm": m.layer_norm}
    if m.name == "hmlstm":
        options |= {
            "boundary": m.boundary,
            "top_layer_boundary": m.top_layer_boundary,
            "grad_through_ops": m.grad_through_ops,
        }
    return CharLM(
        vocab_size,
        m.hidden_size,
        m.num_layers,
        m.embedding_dim,
        m.output_size,
        cell=m.name,
        **options,
    )


class LitCharLM(L.LightningModule):
    """Character LM training: Adam, clipping (by the Trainer), plateau schedule, BPC metrics.

    Args:
        config: the run's :class:`Config` as a plain dict (so checkpoints rebuild the model).
        vocab_size: V.
        vocab: the symbols in id order (kept in checkpoints for decoding).
    """

    def __init__(self, config: dict[str, Any], vocab_size: int, vocab: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.config = from_dict(Config, config)
        self.model = build_model(self.config, vocab_size)
        self.num_layers = self.config.model.num_layers
        # keys carry a suffix: nn.Module already has an attribute named "train"
        self.bpc_metrics = torch.nn.ModuleDict({f"{s}_": BitsPerChar() for s in SPLIT_NAMES})
        self.stat_metrics = torch.nn.ModuleDict(
            {f"{s}_": BoundaryStats(self.num_layers) for s in SPLIT_NAMES}
        )
        self.carried: dict[str, HMLSTMState | None] = dict.fromkeys(SPLIT_NAMES)
        self.plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self._plateau_state: dict[str, Any] | None = None  # restored before the scheduler exists

    def bpc(self, split: str) -> BitsPerChar:
        return self.bpc_metrics[f"{split}_"]  # type: ignore[return-value]

    def stats(self, split: str) -> BoundaryStats:
        return self.stat_metrics[f"{split}_"]  # type: ignore[return-value]

    @property
    def is_hierarchical(self) -> bool:
        return self.config.model.name == "hmlstm"

    def num_parameters(self) -> int:
        return count_parameters(self.model)

    # ----------------------------------------------------------------------------- steps
    def _step(self, split: str, batch: Tensor) -> Tensor:
        tokens, targets = batch[:-1], batch[1:]  # (T, B)
        state = self.carried[split]
        if state is not None and state.h.size(1) != tokens.size(1):
            state = None  # a different batch size (e.g. a sanity check): start afresh
        elif state is not None and state.h.device != tokens.device:  # restored from a checkpoint
            state = HMLSTMState(*(x.to(tokens.device) for x in state))
        out = self.model(tokens, targets, state)
        z0 = None if state is None else state.z
        self.carried[split] = tree_map(lambda x: x.detach(), out.state)
        count = targets.numel()
        self.bpc(split).update(out.loss, count)
        if self.is_hierarchical:
            self.stats(split).update(out.boundaries, z0)
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
        loss = self._step("train", batch)
        B, T = batch.shape[1], batch.shape[0] - 1
        self.log("train/loss", loss, prog_bar=True, batch_size=B * T)
        if self.trainer.log_every_n_steps and batch_idx % self.trainer.log_every_n_steps == 0:
            self.log("train/bpc", self.bpc("train").compute(), prog_bar=True, rank_zero_only=True)
            self.bpc("train").reset()
            if self.is_hierarchical:
                self.log_dict(self._stats("train"), rank_zero_only=True)
            self.log("slope", self.model.rnn.slope if self.is_hierarchical else 1.0)
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step("val", batch)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._step("test", batch)

    def _stats(self, split: str) -> dict[str, Tensor]:
        stats = self.stats(split).compute()
        self.stats(split).reset()
        return {f"{split}/{k}": v for k, v in stats.items()}

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
        if self.plateau is not None and self.trainer.state.fn == "fit":
            # one plateau step per validation, whatever the validation cadence
            self.plateau.step(float(bpc))
        if self.is_hierarchical:
            self.log_dict(self._stats("val"))

    def on_test_epoch_start(self) -> None:
        self.carried["test"] = None

    def on_test_epoch_end(self) -> None:
        self.log("test/bpc", self.bpc("test").compute())
        self.bpc("test").reset()
        if self.is_hierarchical:
            self.log_dict(self._stats("test"))

    # ----------------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam; the plateau schedule is stepped here after each validation, not by Lightning.

        Lightning steps a plateau scheduler by batch or epoch counts, which drift from the
        validation cadence and break a mid-epoch resume; one step per validation does not.
        """
        o = self.config.optim
        optimizer = torch.optim.Adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=o.plateau_factor,
            patience=o.plateau_patience,
            min_lr=o.min_lr,
        )
        if self._plateau_state is not None:
            self.plateau.load_state_dict(self._plateau_state)
        return optimizer

    # ------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = self.carried["train"]  # plain tensors: checkpoints load with weights_only=True
        checkpoint["carried_train_state"] = None if state is None else dict(state._asdict())
        if self.plateau is not None:
            checkpoint["plateau"] = self.plateau.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("carried_train_state")
        if state is not None:
            self.carried["train"] = HMLSTMState(**state)
        self._plateau_state = checkpoint.get("plateau")

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)
