"""Slope annealing follows model.md §2's schedule per step and lands in checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.synthetic import SyntheticDataModule
from hmrnn.config import Config, DataConfig, ModelConfig, SlopeConfig
from hmrnn.lit.callbacks import SlopeAnnealing, slope_at
from hmrnn.lit.module import LitCharLM


def test_slope_schedule() -> None:
    ptb = SlopeConfig(rate=0.04, max_slope=5.0)
    assert slope_at(ptb, 0) == 1.0 and slope_at(ptb, 10) == pytest.approx(1.4)
    assert slope_at(ptb, 100) == pytest.approx(5.0) and slope_at(ptb, 1000) == 5.0
    assert slope_at(SlopeConfig(), 50) == 1.0  # text8 / enwik8: no annealing


class RecordSlope(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(pl_module.model.rnn.slope.item())


def test_annealing_sets_the_slope_every_step_on_fractional_epochs(tmp_path: Path) -> None:
    slope = SlopeConfig(rate=0.5, max_slope=1.7)
    config = Config(
        model=ModelConfig(hidden_size=8, output_size=8, embedding_dim=4),
        data=DataConfig(batch_size=4, bptt=10, train_chars=400, valid_chars=200, test_chars=200),
        slope=slope,
    )
    dm = SyntheticDataModule(config.data)
    dm.setup()
    module = LitCharLM(dataclasses.asdict(config), len(dm.vocab))
    record = RecordSlope()
    trainer = L.Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
        limit_val_batches=0,
        callbacks=[SlopeAnnealing(slope), record],
    )
    trainer.fit(module, datamodule=dm)
    n = trainer.num_training_batches  # 10 batches per epoch
    want = [slope_at(slope, epoch + i / n) for epoch in range(2) for i in range(n)]
    assert record.seen == pytest.approx(want)
    assert record.seen[-1] == pytest.approx(1.7) and record.seen[3] == pytest.approx(1.15)
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=True)["state_dict"]
    assert saved["model.rnn.slope"].item() == pytest.approx(1.7)
