"""optim.warmup_steps and optim.z_lr_scale: one Adam step compared with the plain one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch

from datamodules.synthetic import SyntheticDataModule
from hmrnn.config import Config, ConfigError, DataConfig, ModelConfig, OptimConfig, validate
from hmrnn.lit.base import warmup_factor
from hmrnn.lit.module import LitCharLM


def one_step(tmp_path: Path, **optim: float) -> tuple[dict[str, torch.Tensor], LitCharLM]:
    """The parameters' change in the first optimiser step of a tiny run, and the module."""
    config = Config(
        model=ModelConfig(hidden_size=8, output_size=8, embedding_dim=4, layer_norm=True),
        data=DataConfig(batch_size=4, bptt=10, train_chars=400, valid_chars=200, test_chars=200),
        optim=OptimConfig(lr=0.01, **optim),
    )
    dm = SyntheticDataModule(config.data)
    dm.setup()
    L.seed_everything(0)
    module = LitCharLM(dataclasses.asdict(config), len(dm.vocab))
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        use_distributed_sampler=False,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    delta = {k: v.detach() - before[k] for k, v in module.named_parameters()}
    return delta, module


def test_warmup_factor() -> None:
    assert [warmup_factor(s, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_warmup_and_z_lr_scale_scale_the_first_step(tmp_path: Path) -> None:
    plain, _ = one_step(tmp_path)
    warm, module = one_step(tmp_path, warmup_steps=4)
    for name, d in plain.items():
        assert d.abs().sum() > 0, name  # every parameter moved
        torch.testing.assert_close(warm[name], d / 4, rtol=1e-4, atol=1e-7)
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == 0.01  # restored after the step

    scaled, module = one_step(tmp_path, z_lr_scale=0.1)
    z = {f"model.rnn.{name}": rows for name, _, rows in module.model.rnn.z_rows()}
    assert {n.split(".")[-1].rsplit("_", 1)[0] for n in z} == {
        "weight_ih",
        "weight_hh",
        "weight_td",
        "bias",
        "ln_ih",
        "ln_hh",
        "ln_td",
    }
    for name, d in plain.items():
        want = d.clone()
        if name in z:
            want[z[name]] *= 0.1
        torch.testing.assert_close(scaled[name], want, rtol=1e-4, atol=1e-7)


def test_bad_values_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps"):
        validate(Config(optim=OptimConfig(warmup_steps=-1)))
    with pytest.raises(
        ConfigError, match=r"model.z_bias_init needs one value per detector layer \(2"
    ):
        validate(Config(model=ModelConfig(z_bias_init=[1.0])))
