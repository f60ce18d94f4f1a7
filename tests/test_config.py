"""Configuration: composition order, and bad settings failing early with a clear message."""

from __future__ import annotations

import dataclasses

import pytest

from hmrnn.compose import compose
from hmrnn.config import Config, ConfigError, dotted_keys, from_dict


def test_experiment_then_command_line_override_the_schema() -> None:
    config, _ = compose(["experiment=demo", "model.hidden_size=64", "optim.lr=0.01"])
    assert config.experiment == "demo"
    assert config.model.name == "hmlstm" and config.data.name == "synthetic"
    assert config.model.hidden_size == 64  # command line beats the experiment's 128
    assert config.model.embedding_dim == 32  # from the experiment
    assert config.optim.lr == 0.01
    assert config.optim.grad_clip == Config().optim.grad_clip  # schema default


def test_group_choice_on_the_command_line_wins_over_the_experiment() -> None:
    config, _ = compose(["experiment=demo", "model=lstm"])
    assert config.model.name == "lstm"


def test_soft_gated_is_the_hmlstm_with_soft_boundaries() -> None:
    import torch

    from hmrnn.lit.module import LitCharLM

    config, _ = compose(["experiment=demo", "model=soft_gated", "model.hidden_size=16"])
    assert config.model.name == "soft_gated" and config.model.boundary == "soft"
    assert config.model.cell == "hmlstm"
    module = LitCharLM(dataclasses.asdict(config), vocab_size=12)
    assert module.is_hierarchical and module.model.rnn.boundary == "soft"
    z = module.model(torch.randint(0, 12, (20, 3)))[3]
    assert ((z > 0) & (z < 1)).any(), "soft boundaries take values between 0 and 1"


def test_fixed_boundary_imposes_counted_boundaries_on_the_hmlstm() -> None:
    import torch

    from hmrnn.lit.module import LitCharLM

    argv = ["experiment=demo", "model=fixed_boundary", "model.hidden_size=16"]
    config, _ = compose([*argv, "model.fixed_source=periodic", "model.fixed_periods=[2,3]"])
    assert config.model.cell == "hmlstm" and config.model.fixed_periods == [2, 3]
    module = LitCharLM(dataclasses.asdict(config), vocab_size=12)
    assert module.is_hierarchical
    z = module.model(torch.randint(0, 12, (12, 2)))[3]
    assert z[:, 0, 0].tolist() == [0, 1] * 6 and z[:, 0, 1].tolist() == [0] * 5 + [1] + [0] * 5 + [
        1
    ]
    out = module.model(torch.randint(0, 12, (5, 2)))  # the counters' phase is saved and restored
    module.carried["train"] = out.state
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    again = LitCharLM(dataclasses.asdict(config), vocab_size=12)
    again.on_load_checkpoint(checkpoint)
    assert type(again.carried["train"]) is type(out.state)
    assert torch.equal(again.carried["train"].phase, out.state.phase)
    config, _ = compose(argv)  # the default: by the data's delimiters
    assert config.model.fixed_source == "delimiter"
    with pytest.raises(ValueError, match="delimiters"):
        LitCharLM(dataclasses.asdict(config), vocab_size=12)  # train.py passes the data's ids


def test_paper_iam_ondb_experiment_matches_spec_section_6() -> None:
    config, _ = compose(["experiment=iam_ondb"])
    m = config.model
    assert config.data.name == "iam_ondb" and m.name == "hmlstm" and m.boundary == "step"
    assert (m.hidden_size, m.output_size, m.num_layers) == (400, 400, 3)
    assert config.data.batch_size == 32 and config.optim.lr == 3e-4
    assert (config.slope.rate, config.slope.max_slope) == (0.004, 3.0)


def test_config_round_trips_through_a_dict() -> None:
    config, _ = compose(["experiment=demo", "logger.tags=[a,b]"])
    again = from_dict(Config, dataclasses.asdict(config))
    assert again == config and again.logger.tags == ["a", "b"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["model.hiden_size=3"],
            r"unknown key 'model.hiden_size'.*did you mean 'model.hidden_size'",
        ),
        (["model.hidden_size=abc"], r"bad value for 'model.hidden_size'"),
        (
            ["model.boundary=gumbel"],
            r"model.boundary='gumbel' is not a valid choice.*step, step_leaky, bernoulli, soft",
        ),
        (["model=hmlstmm"], r"model='hmlstmm' has no file .*did you mean 'hmlstm'"),
        (["experiment=nope"], r"experiment='nope' has no file"),
        (["logger.mode=onlien"], r"did you mean 'online'"),
        (["data.batch_size=0"], r"data.batch_size must be positive"),
        (["hidden_size"], r"not of the form key=value"),
        (["regularizer.weight=1.0"], r"regularizer.target_rates needs one rate per detector layer"),
        (["model=soft_gated", "model.boundary=step"], r"model=soft_gated needs model.boundary"),
        (
            ["model=fixed_boundary", "model.fixed_periods=[1,2,3]"],
            r"model.fixed_periods needs one period >= 1 per detector layer \(2 for",
        ),
        (["model=fixed_boundary", "model.fixed_periods=[0,2]"], r"model.fixed_periods needs"),
        (["model=fixed_boundary", "model.fixed_source=words"], r"periodic, delimiter"),
    ],
)
def test_bad_settings_fail_with_one_clear_sentence(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compose(argv)


def test_every_schema_key_is_listed() -> None:
    keys = dotted_keys()
    assert "model.hidden_size" in keys and "trainer.devices" in keys and "seed" in keys


@pytest.mark.parametrize("name", ["ptb", "text8", "enwik8"])
def test_paper_experiments_match_spec_section_6(name: str) -> None:
    config, _ = compose([f"experiment={name}"])
    big = name != "ptb"
    assert config.data.name == name and config.model.name == "hmlstm"
    assert (config.model.hidden_size, config.model.output_size) == (
        (1024, 2048) if big else (512, 512)
    )
    assert config.data.batch_size == (128 if big else 64) and config.data.bptt == 100
    assert config.optim.lr == (1e-3 if big else 2e-3) and config.optim.grad_clip == 1.0
    assert config.optim.plateau_factor == 0.02 and config.model.layer_norm
    assert config.model.boundary == "step" and config.model.embedding_dim == 128
    assert (config.slope.rate, config.slope.max_slope) == ((0.0, 1.0) if big else (0.04, 5.0))
    small, _ = compose([f"experiment={name}_small"])
    assert small.data.name == name and small.model.hidden_size < config.model.hidden_size
