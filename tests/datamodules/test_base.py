"""The data-set interface: every registered data set implements it, and its batching answers
agree with the loaders the data set builds."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from datamodules import build_datamodule
from datamodules.base import KINDS, DataError, DataSetModule
from datamodules.iam import IAMOnDBDataModule
from datamodules.stream import CharStreamDataModule, Vocabulary
from datamodules.synthetic import SyntheticDataModule
from hmrnn.config import DataConfig
from hmrnn.registry import DATASETS
from tests.datamodules.iam_files import SAMPLE, config, needs_sample


def synthetic(**settings) -> SyntheticDataModule:
    return SyntheticDataModule(
        DataConfig(train_chars=3000, valid_chars=1000, test_chars=1000, **settings)
    )


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_data_set_is_a_complete_data_set_module(name: str) -> None:
    cls = DATASETS.get(name)
    assert issubclass(cls, DataSetModule) and not inspect.isabstract(cls)
    assert cls.kind in KINDS
    assert (cls.kind == "text") == issubclass(cls, CharStreamDataModule)


def test_unknown_data_set_is_a_data_error_naming_the_choices() -> None:
    with pytest.raises(DataError, match=r"data.name='ptbb'.*did you mean 'ptb'.*synthetic"):
        build_datamodule(DataConfig(name="ptbb"))
    assert isinstance(build_datamodule(DataConfig(name="synthetic")), SyntheticDataModule)


def test_a_data_set_must_implement_the_interface_and_say_its_kind() -> None:
    class Unfinished(CharStreamDataModule):  # no load()
        pass

    with pytest.raises(TypeError, match="load"):
        Unfinished(DataConfig())  # type: ignore[abstract]

    class Kindless(DataSetModule):
        def train_batches(self) -> int:
            return 1

        def check_batching(self) -> None:
            pass

        def vocabulary(self) -> None:
            return None

    with pytest.raises(TypeError, match="kind"):
        Kindless(DataConfig())


@pytest.mark.parametrize(("batch_size", "bptt"), [(8, 50), (7, 13), (32, 100), (1, 3000)])
def test_text_train_batches_are_the_loaders_and_the_stream_arithmetic(batch_size, bptt) -> None:
    dm = synthetic(batch_size=batch_size, bptt=bptt)
    batches = dm.train_batches()
    assert batches == len(list(dm.train_dataloader()))
    assert batches == math.ceil((len(dm.tokens["train"]) // batch_size - 1) / bptt)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 1600}, "the train split holds 3,000 symbols, too few for 1600 rows"),
        ({"batch_size": 600}, r"the validation split holds 1,000 symbols.*\(or data.eval_batch"),
        ({"eval_batch_size": 501}, "the validation split holds 1,000 symbols, too few for 501"),
    ],
)
def test_text_too_short_for_the_batching_names_the_setting(settings, message) -> None:
    dm = synthetic(**settings)
    with pytest.raises(DataError, match=message) as error:
        dm.check_batching()
    assert "lower data.batch_size" in str(error.value)
    synthetic(batch_size=500, eval_batch_size=500).check_batching()  # 2 symbols a row: enough


class Letters(CharStreamDataModule):
    """A text data set with no rules of its own: the interface's defaults."""

    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        vocab = Vocabulary(("a", "b"))
        return {s: vocab.encode("ab" * 50) for s in ("train", "valid", "test")}, vocab


def test_text_answers_of_the_interface() -> None:
    plain = Letters(DataConfig())
    assert plain.kind == "text" and plain.vocabulary() == ["a", "b"]
    assert plain.delimiter_ids() == [] and plain.truth_rules() == {}
    assert plain.boundaries("test") == {} and plain.reference_rates() == {}
    dm = synthetic()
    assert dm.vocabulary() == list(dm.source.alphabet)
    assert set(dm.reference_rates()) == {"entropy_rate", "topic_forgetting_rate", "unigram_bpc"}
    assert set(dm.boundaries("test")) == {"word", "word_at_delim", "phrase"}


@needs_sample
def test_handwriting_answers_of_the_interface(tmp_path: Path) -> None:
    dm = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0), progress=False)
    assert dm.kind == "handwriting" and dm.vocabulary() is None
    assert dm.delimiter_ids() == [] and dm.truth_rules() == {}
    assert dm.boundaries("test") == {} and dm.reference_rates() == {}
    dm.check_batching()
    assert dm.train_batches() == len(list(dm.train_dataloader())) == 7  # 27 lines, 4 a batch
    dm.config.batch_size = 0
    with pytest.raises(DataError, match="batch size must be positive"):
        dm.check_batching()
