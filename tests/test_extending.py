"""The README's "Extending" section done from this file alone: a data set and a model registered
here are valid choices everywhere at once (configuration, --help, training, results). The third
extension, a boundary estimator, is done the same way in tests/core/test_estimators.py."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules import build_datamodule
from datamodules.stream import CharStreamDataModule, Vocabulary
from hmrnn import train as train_command
from hmrnn.cli import train_help
from hmrnn.compose import compose
from hmrnn.config import ConfigError
from hmrnn.models import FIXED_ONLY, ModelSpec
from hmrnn.registry import DATASETS, MODELS

WORDS = ["ab", "cab", "bca", "a", "cc"]


class ToyWords(CharStreamDataModule):
    """Words of a five-word lexicon separated by spaces: the whole of a new text data set is
    its streams, its vocabulary and (for the boundary scores) its delimiters."""

    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        rng = np.random.default_rng(self.config.source_seed)
        text = " ".join(rng.choice(WORDS, 8_000))
        vocab = Vocabulary.from_text(text)
        ids = vocab.encode(text)
        cut = [len(ids) * 8 // 10, len(ids) * 9 // 10]
        return {"train": ids[: cut[0]], "valid": ids[cut[0] : cut[1]], "test": ids[cut[1] :]}, vocab

    def delimiter_ids(self) -> list[int]:
        return self.symbol_ids(" ")


def needs_bernoulli(config: Any) -> None:
    if config.model.boundary != "bernoulli":
        raise ConfigError("model=sampled_hmlstm needs model.boundary=bernoulli")


@pytest.fixture
def registered() -> Iterator[None]:
    DATASETS.register("toy_words", ToyWords)
    MODELS.register(
        "sampled_hmlstm", ModelSpec("hmlstm", check=needs_bernoulli, ignores=FIXED_ONLY)
    )
    yield
    DATASETS.unregister("toy_words")
    MODELS.unregister("sampled_hmlstm")


def test_registered_names_are_choices_in_the_config_and_the_help(registered: None) -> None:
    config, _ = compose(["data=toy_words", "model=sampled_hmlstm", "model.boundary=bernoulli"])
    assert (config.data.name, config.model.name, config.model.cell) == (
        "toy_words",
        "sampled_hmlstm",
        "hmlstm",
    )
    with pytest.raises(ConfigError, match=r"needs model\.boundary=bernoulli"):
        compose(["model=sampled_hmlstm"])  # the model's own check
    help_text = train_help()
    assert "\n  toy_words\n" in help_text and "\n  sampled_hmlstm\n" in help_text
    assert "toy_words" in help_text.split("data.name: str")[1].split("\n  data.")[0]
    assert isinstance(build_datamodule(config.data), ToyWords)


def test_unregistered_names_are_refused(registered: None) -> None:
    DATASETS.unregister("toy_words")
    with pytest.raises(ConfigError, match="data='toy_words' has no file"):
        compose(["data=toy_words"])
    DATASETS.register("toy_words", ToyWords)


def test_a_registered_data_set_and_model_train_end_to_end(registered: None, tmp_path: Path) -> None:
    argv = ["data=toy_words", "model=sampled_hmlstm", "model.boundary=bernoulli"]
    argv += ["model.hidden_size=16", "model.output_size=16", "model.embedding_dim=8"]
    argv += ["data.batch_size=8", "data.bptt=20", "trainer.max_steps=40", "trainer.max_epochs=1"]
    argv += ["trainer.val_check_interval=20", "trainer.enable_progress_bar=false"]
    argv += ["trainer.accelerator=cpu", "logger.mode=disabled", f"out_dir={tmp_path}"]
    results = train_command.main([*argv, "run_name=toy"])
    assert results is not None and results["global_step"] == 40
    uniform = math.log2(len(set(" ".join(WORDS))))
    assert results["metrics"]["test/bpc"] < uniform  # it learned something about the words
    assert set(results["boundaries"]) >= {"l1/word/tol0", "l1/word_at_delim/tol0"}
    assert results["config"]["model"]["name"] == "sampled_hmlstm"
