"""Grouping runs into variants: seeds, and settings a model does not read (the registry's
``ignores``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hmrnn.models import ModelSpec
from hmrnn.registry import MODELS
from hmrnn.report.runs import RunRecord
from hmrnn.report.tables import markdown_table
from hmrnn.report.variants import group_variants, table_rows


def test_report_groups_seeds_into_variants_with_mean_and_spread() -> None:
    def run(name: str, model: str, seed: int, bpc: float) -> RunRecord:
        config = {"model.name": model, "seed": seed, "model.num_layers": 3, "run_name": name}
        history = [{"step": 9.0, "val/bpc": bpc + 0.5}, {"step": 19.0, "val/bpc": bpc + 0.1}]
        return RunRecord(name, config, {"test/bpc": bpc}, history, 100, 10.0)

    runs = [run("a", "hmlstm", 0, 1.0), run("b", "hmlstm", 1, 1.2), run("c", "lstm", 0, 1.5)]
    rows = table_rows(group_variants(runs))
    assert [r["variant"] for r in rows] == ["model.name=hmlstm", "model.name=lstm"]
    assert rows[0]["test_mean"] == pytest.approx(1.1)
    assert rows[0]["test_std"] == pytest.approx(0.1414213, rel=1e-5)  # sample std of 1.0, 1.2
    assert rows[0]["best_val_mean"] == pytest.approx(1.2)
    assert rows[1]["test_std"] == 0.0 and rows[0]["seeds"] == [0, 1]
    assert "1.100 ± 0.141" in markdown_table(rows)


def labels(*configs: dict[str, Any]) -> list[str]:
    runs = [RunRecord(f"r{i}", c, {"test/bpc": 1.0}) for i, c in enumerate(configs)]
    return [v.label for v in group_variants(runs)]


def test_runs_that_differ_only_in_settings_their_model_ignores_are_one_variant() -> None:
    hm = {"model.boundary": "step", "model.fixed_periods": [1, 4]}
    other = {"model.boundary": "soft", "model.fixed_periods": [2, 2]}
    # the LSTM reads neither; the HM-LSTM reads the estimator, not the fixed periods
    assert labels({"model.name": "lstm", **hm}, {"model.name": "lstm", **other}) == ["all runs"]
    assert labels({"model.name": "hmlstm", **hm}, {"model.name": "hmlstm", **other}) == [
        "model.boundary=soft",
        "model.boundary=step",
    ]
    fixed = labels(
        {"model.name": "fixed_boundary", **hm},
        {"model.name": "fixed_boundary", **hm, "model.fixed_periods": [2, 2]},
    )
    assert fixed == ["model.fixed_periods=[1, 4]", "model.fixed_periods=[2, 2]"]
    # an unknown model: nothing model-specific is ignored
    assert len(labels({"model.name": "mystery", **hm}, {"model.name": "mystery", **other})) == 2


@pytest.fixture
def registered() -> Iterator[str]:
    MODELS.register("plain_rnn", ModelSpec("lstm", hierarchical=False, ignores=("model.layer_",)))
    yield "plain_rnn"
    MODELS.unregister("plain_rnn")


def test_a_registered_model_groups_by_its_own_ignores(registered: str) -> None:
    a = {"model.name": registered, "model.layer_norm": True, "optim.lr": 1e-3}
    b = {"model.name": registered, "model.layer_norm": False, "optim.lr": 1e-3}
    assert labels(a, b) == ["all runs"]
    assert labels(a, {**b, "optim.lr": 2e-3}) == ["optim.lr=0.001", "optim.lr=0.002"]
