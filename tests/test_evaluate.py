"""Boundaries against the truth in both conventions: validation metrics, results.json, report."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from datamodules.stream import CharStreamDataModule, Vocabulary
from datamodules.synthetic import SyntheticDataModule
from hmrnn import report
from hmrnn.config import Config, DataConfig, ModelConfig
from hmrnn.core.analysis import true_boundaries, truth_kinds
from hmrnn.evaluate import boundary_report, run_split
from hmrnn.lit.module import LitCharLM


def lit_module(config: Config, dm: CharStreamDataModule) -> LitCharLM:
    """As ``hmrnn.train.build_module`` builds it for a character stream."""
    assert dm.vocab is not None
    rules = {kind: [list(b), list(a)] for kind, (b, a) in dm.truth_rules().items()}
    vocab = list(dm.vocab.symbols)
    return LitCharLM(dataclasses.asdict(config), len(vocab), vocab, dm.delimiter_ids(), rules)


@torch.no_grad()
def lightning_test_pass(module: LitCharLM, dm: CharStreamDataModule) -> dict[str, float]:
    """What a test pass logs: the state carried over the test split's segments in order."""
    module.eval()
    segments = dm.segments("test")
    for i in range(len(segments)):
        module._step("test", segments[i])
    out = module.stats("test").compute() | module.agreement("test").compute()
    return {f"test/{k}": float(v) for k, v in out.items()}


def test_fixed_boundary_scores_one_at_its_delimiters_in_metrics_results_and_report() -> None:
    model = ModelConfig(
        name="fixed_boundary", hidden_size=8, embedding_dim=8, output_size=8, num_layers=3
    )  # fixed_periods [1, 4]: layer 1 fires on every delimiter read, layer 2 on every fourth
    data = DataConfig(batch_size=4, bptt=50, train_chars=400, valid_chars=400, test_chars=3000)
    config = Config(model=model, data=data)
    dm = SyntheticDataModule(data)
    dm.setup()
    module = lit_module(config, dm)
    logged = lightning_test_pass(module, dm)
    assert logged["test/word_at_delim_f1_l1_tol0"] == 1.0
    assert logged["test/word_f1_l1_tol0"] < 0.5  # each boundary one step after the word's end
    assert logged["test/word_f1_l1_tol1"] > 0.95  # all but ends on a batch's last step

    _, bounds, seen = run_split(module.model, dm, "test")  # results.json's "boundaries"
    truth = dm.boundaries("test")
    assert list(truth) == ["word", "word_at_delim", "phrase"]
    scores = boundary_report(bounds, seen, truth)
    assert scores["l1/word_at_delim/tol0"]["f1"] == 1.0 and scores["l1/word/tol0"]["f1"] < 0.5
    assert scores["l1/word/tol1"]["f1"] == 1.0  # one stream: no batch edges
    for l in (1, 2):  # one process over the same rows: the metric's numbers (no window to cross)
        for kind in truth:
            got = scores[f"l{l}/{kind}/tol0"]["f1"]
            assert abs(got - logged[f"test/{kind}_f1_l{l}_tol0"]) < 1e-12, (l, kind)

    config_flat = {"model.name": "fixed_boundary", "model.num_layers": 3, "seed": 0}
    run = report.RunRecord(
        "fixed", config_flat, logged, agreement=report.agreement_scores({"boundaries": scores})
    )
    header, (cells,) = report.boundary_cells(report.table_rows(report.group_variants([run])))
    line = dict(zip(header, cells, strict=True))
    assert line["layer 1 F1 word_at_delim (tol 0 / 1)"] == "1.00 / 1.00"
    assert line["layer 1 F1 word (tol 0 / 1)"].endswith(" / 1.00")
    assert float(line["layer 1 F1 word (tol 0 / 1)"].split(" / ")[0]) < 0.5
    for said in ("'word_at_delim'", "reads the delimiter", "fixed_boundary", "either"):
        assert said in report.BOUNDARY_NOTE


class RunsOfDelimiters(CharStreamDataModule):
    """PTB's rules on a random stream where delimiters often come two or more in a row."""

    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        ids = np.random.default_rng(0).choice(4, size=600, p=[0.3, 0.2, 0.3, 0.2])
        return {s: ids.astype(np.uint8) for s in ("train", "valid", "test")}, Vocabulary(
            ("a", "b", "_", "\n")
        )

    def delimiter_ids(self) -> list[int]:
        return [2, 3]

    def truth_rules(self) -> dict[str, tuple[list[int], list[int]]]:
        return {"word": ([2, 3], []), "line": ([], [3])}


def test_batches_with_the_carried_input_mark_the_streams_boundaries() -> None:
    from datamodules.stream import AT_DELIMITER as STREAM_SUFFIX
    from hmrnn.core.analysis import AT_DELIMITER

    assert STREAM_SUFFIX == AT_DELIMITER
    data = DataConfig(batch_size=1, bptt=7)  # one row: every batch edge has a predecessor
    dm = RunsOfDelimiters(data)
    rules, delimiters = dm.truth_rules(), dm.delimiter_ids()
    stream = dm.boundaries("test")
    assert list(stream) == truth_kinds(rules) == ["word", "word_at_delim", "line"]
    segments, previous = dm.segments("test"), None
    for i in range(len(segments)):
        batch, positions = segments[i], segments.positions(i)
        truth = true_boundaries(batch[:-1], batch[1:], rules, delimiters, previous)
        for kind, marks in truth.items():
            assert marks.numpy().tolist() == stream[kind][positions].tolist(), (i, kind)
        previous = batch[-2]
    # the LightningModule carries the input the same way: its counts of true boundaries agree
    model = ModelConfig(hidden_size=8, embedding_dim=8, output_size=8, num_layers=2)
    module = lit_module(Config(model=model, data=data), dm)
    lightning_test_pass(module, dm)
    seen = np.zeros(len(dm.tokens["test"]), dtype=bool)
    seen[np.concatenate([segments.positions(i).ravel() for i in range(len(segments))])] = True
    gold = module.agreement("test").counts[0, :, 0, 3]  # (kinds,) true boundaries counted
    assert gold.tolist() == [float(stream[kind][seen].sum()) for kind in stream]
    assert stream["word_at_delim"].sum() < (dm.tokens["test"] >= 2).sum()  # runs: one each
