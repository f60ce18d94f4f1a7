"""IAM-OnDB: the line-file parser, splits, normalisation, the cache and variable-length batches."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datamodules.iam as iam
from datamodules.iam import (
    IAMFormatError,
    IAMOnDBDataModule,
    LengthBatchSampler,
    SequenceSet,
    build_splits,
    collate_sequences,
    parse_line_strokes,
    read_archive,
    read_form_list,
    read_tree,
)
from datamodules.stream import SPLITS, DataError
from hmrnn.config import DataConfig

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IAM = SHARED / "iam-ondb"
SAMPLE, FULL, LISTS = IAM / "sample", IAM / "full", IAM / "splits"
SAMPLE_FILES = sorted((SAMPLE / "lineStrokes").rglob("*.xml")) if SAMPLE.is_dir() else []

needs_sample = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"reference data {SAMPLE} is absent (see shared/data/README.md)"
)
needs_full = pytest.mark.skipif(
    not (FULL / "lineStrokes-all.tar.xz").is_file(),
    reason=f"reference archive {FULL}/lineStrokes-all.tar.xz is absent (see shared/data/README.md)",
)

POINT = re.compile(rb'<Point\s+x="(-?\d+)"\s+y="(-?\d+)"')
STROKE = re.compile(rb"<Stroke\b")

MINIMAL = b"""<?xml version="1.0" encoding="ISO-8859-1"?>
<WhiteboardCaptureSession><WhiteboardDescription/><StrokeSet>
<Stroke><Point x="10" y="20" time="1"/><Point x="13" y="18" time="2"/></Stroke>
<Stroke></Stroke>
<Stroke><Point time="3" y="30" x="11"/></Stroke>
</StrokeSet></WhiteboardCaptureSession>"""


def config(root: Path, local_dir: Path | str = "", **extra) -> DataConfig:
    cfg = DataConfig(root=str(root), batch_size=4)
    cfg.local_dir = str(local_dir)
    for key, value in extra.items():  # fields the lead adds to DataConfig (getattr in the code)
        setattr(cfg, key, value)
    return cfg


def raw_points(path: Path) -> np.ndarray:
    """Absolute (x, y) of every Point, counted independently of the parser."""
    return np.array(POINT.findall(path.read_bytes()), dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------------------------------------
# the parser


def test_minimal_document_offsets_and_pen_ups(tmp_path) -> None:
    path = tmp_path / "x.xml"
    path.write_bytes(MINIMAL)
    out = parse_line_strokes(path)
    assert out.dtype == np.float32 and out.shape == (3, 3)
    assert out.tolist() == [[0, 0, 0], [3, -2, 1], [-2, 12, 1]]  # the empty Stroke adds nothing


@needs_sample
def test_sample_forms_counts_pen_ups_and_cumsum() -> None:
    assert len(SAMPLE_FILES) == 30  # a01-000u: 6, a01-020x: 6, a02-000: 10, a02-050: 8
    for path in SAMPLE_FILES:
        data = path.read_bytes()
        absolute = raw_points(path)
        assert len(absolute) == len(re.findall(rb"<Point\b", data))
        out = parse_line_strokes(path)
        assert out.shape == (len(absolute), 3) and out.dtype == np.float32
        assert int(out[:, 2].sum()) == len(STROKE.findall(data))  # one pen-up per stroke
        assert out[-1, 2] == 1 and set(np.unique(out[:, 2])) <= {0.0, 1.0}
        assert out[0, :2].tolist() == [0, 0]
        rebuilt = np.cumsum(out[:, :2].astype(np.int64), axis=0)
        assert np.array_equal(rebuilt, absolute - absolute[0])


@needs_sample
def test_tree_and_archive_give_the_same_sequences(tmp_path) -> None:
    archive = tmp_path / "lineStrokes-all.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(SAMPLE / "lineStrokes", arcname="lineStrokes")
    tree, packed = read_tree(SAMPLE / "lineStrokes"), read_archive(archive)
    assert sorted(tree) == sorted(packed) == sorted(p.stem for p in SAMPLE_FILES)
    assert all(np.array_equal(tree[k], packed[k]) for k in tree)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "well-formed"),
        (b"\x00\xff garbage", "well-formed"),
        (b"<WhiteboardCaptureSession><StrokeSet>", "well-formed"),
        (b"<Other/>", "root element"),
        (b"<WhiteboardCaptureSession/>", "no StrokeSet"),
        (b"<WhiteboardCaptureSession><StrokeSet/></WhiteboardCaptureSession>", "empty StrokeSet"),
        (
            b"<WhiteboardCaptureSession><StrokeSet><Stroke/></StrokeSet></WhiteboardCaptureSession>",
            "empty StrokeSet",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point y="1"/></Stroke></StrokeSet>'
            b"</WhiteboardCaptureSession>",
            "no x or no y",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="a" y="1"/></Stroke>'
            b"</StrokeSet></WhiteboardCaptureSession>",
            "not a number",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="nan" y="1"/></Stroke>'
            b"</StrokeSet></WhiteboardCaptureSession>",
            "not finite",
        ),
        (
            b'<WhiteboardCaptureSession><StrokeSet><Stroke><Point x="-1e300" y="1"/>'
            b'<Point x="1e300" y="1"/></Stroke></StrokeSet></WhiteboardCaptureSession>',
            "not finite",
        ),
        (
            b"<WhiteboardCaptureSession><StrokeSet/><StrokeSet/></WhiteboardCaptureSession>",
            "more than one StrokeSet",
        ),
        (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
            b"<WhiteboardCaptureSession>&b;</WhiteboardCaptureSession>",
            "DOCTYPE",
        ),
        (b'<?xml version="1.0" encoding="no-such-codec"?><a/>', "XML"),
    ],
)
def test_malformed_files_raise_one_error_naming_the_file(tmp_path, data, reason) -> None:
    path = tmp_path / "bad-01.xml"
    path.write_bytes(data)
    with pytest.raises(IAMFormatError, match=reason) as info:
        parse_line_strokes(path)
    assert str(path) in str(info.value) and isinstance(info.value, DataError)
    with pytest.raises(IAMFormatError, match="cannot be read"):
        parse_line_strokes(tmp_path / "missing.xml")


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail a hang instead of waiting for it (hypothesis' deadline only judges finished calls)."""
    if not hasattr(signal, "SIGALRM"):  # pragma: no cover - not on Windows
        yield
        return

    def hang(*_) -> None:
        raise TimeoutError(f"parse_line_strokes ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_parse(folder: Path, data: bytes) -> None:
    path = folder / "fuzz-01.xml"
    path.write_bytes(data)
    try:
        with time_limit(5):
            out = parse_line_strokes(path)
    except IAMFormatError as error:
        assert str(path) in str(error)
        return
    assert out.ndim == 2 and out.shape[1] == 3 and len(out) >= 1 and out.dtype == np.float32
    assert np.isfinite(out).all() and set(np.unique(out[:, 2])) <= {0.0, 1.0}
    assert out[-1, 2] == 1 and out[0, :2].tolist() == [0, 0]


FUZZ = settings(
    max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_random_bytes(tmp_path, data) -> None:
    _check_parse(tmp_path, data)


SEED_XML = min((p.read_bytes() for p in SAMPLE_FILES), key=len, default=MINIMAL)  # a whole file
TAG_ENDS = [m.end() for m in re.finditer(rb"/?>", SEED_XML)]  # cuts that keep tags whole
PIECES = st.one_of(
    st.binary(max_size=4),
    st.sampled_from(
        [
            *(b'x="', b'y="', b"-", b"e9", b"nan", b'"', b"<Point ", b"<Stroke>", b"</Stroke>"),
            *(b"/>", b"<StrokeSet>", b"&amp;", b"<!--", b"-->", b"\xff", b"1.5", b' x="1"'),
        ]
    ),
)


@FUZZ
@given(
    cut=st.one_of(st.just(len(SEED_XML)), st.sampled_from(TAG_ENDS), st.integers(0, len(SEED_XML))),
    edits=st.lists(
        st.tuples(st.integers(0, len(SEED_XML)), st.sampled_from([0, 1, 2]), PIECES), max_size=3
    ),
    close=st.booleans(),
)
def test_fuzz_mutated_real_xml(tmp_path, cut, edits, close) -> None:
    data = bytearray(SEED_XML[:cut])
    if close:
        data += b"</Stroke></StrokeSet></WhiteboardCaptureSession>"
    for at, kind, piece in edits:
        at = min(at, len(data))
        if kind == 0:  # insert
            data[at:at] = piece
        elif kind == 1:  # delete
            del data[at : at + len(piece) + 1]
        else:  # overwrite
            data[at : at + len(piece)] = piece
    _check_parse(tmp_path, bytes(data))


# ---------------------------------------------------------------------------------------------
# splits and normalisation


def _fake(lengths: list[int]) -> dict[str, np.ndarray]:
    return {f"f{i:05d}-01": np.zeros((n, 3), np.float32) for i, n in enumerate(lengths)}


def test_random_split_rounding_seed_and_filter() -> None:
    rng = np.random.default_rng(1)
    sequences = _fake([300] * 11_628 + list(rng.integers(1, 300, 567)))
    splits = build_splits(sequences)
    assert {s: len(v) for s, v in splits.items()} == {"train": 10_465, "valid": 581, "test": 582}
    everything = [n for s in SPLITS for n in splits[s]]
    assert len(set(everything)) == 11_628 and all(len(sequences[n]) >= 300 for n in everything)
    assert build_splits(sequences) == splits  # fixed seed
    assert build_splits(dict(reversed(sequences.items()))) == splits  # independent of file order
    assert build_splits(sequences, seed=1) != splits
    with pytest.raises(DataError, match="unknown"):
        build_splits(sequences, mode="nope")


def test_official_split_by_form() -> None:
    sequences = _fake([400, 400, 400, 100, 400, 400])
    names = sorted(sequences)  # f00000-01 ... f00005-01: form = f0000i
    lists = {"trainset": ["f00000"], "testset_t": ["f00001"], "testset_f": ["f00003"]}
    lists["testset_v"] = ["f00004"]
    splits = build_splits(sequences, mode="official", official_lists=lists)
    assert splits["train"] == names[:2]  # f00003 is too short, f00005 is in no list
    assert splits["valid"] == splits["test"] == [names[4]]
    with pytest.raises(DataError, match="form lists"):
        build_splits(sequences, mode="official")


@needs_sample
def test_datamodule_on_sample_normalises_with_train_only_and_caches(tmp_path, caplog) -> None:
    dm = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0), progress=False)
    dm.prepare_data()
    dm.setup()
    counts = {s: len(dm.sequences[s]) for s in SPLITS}
    assert counts == {"train": 27, "valid": 1, "test": 2}  # 30 * 90 // 100, 30 * 5 // 100, rest
    raw = {p.stem: parse_line_strokes(p) for p in SAMPLE_FILES}
    train = np.concatenate([raw[n] for n in dm.sequences["train"].names])[:, :2].astype(np.float64)
    assert np.allclose(dm.mean, train.mean(0)) and np.allclose(dm.std, train.std(0))
    whole = np.concatenate(list(raw.values()))[:, :2].astype(np.float64)
    assert not np.allclose(dm.mean, whole.mean(0))  # not the statistics of all splits
    for split in SPLITS:
        for i, name in enumerate(dm.sequences[split].names):
            seq = dm.sequences[split][i]
            assert np.array_equal(seq[:, 2], raw[name][:, 2])  # pen_up untouched
            assert np.allclose(dm.denormalise(seq)[:, :2], raw[name][:, :2], atol=1e-3)
    norm = dm.sequences["train"].points[:, :2].astype(np.float64)
    assert np.allclose(norm.mean(0), 0, atol=1e-5) and np.allclose(norm.std(0), 1, atol=1e-5)

    # a second start reads the cache: no parsing, fast
    again = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0), progress=False)
    again.read_source = None  # type: ignore[assignment]  # would fail if called
    assert again.cache_is_valid()
    start = time.perf_counter()
    again.setup()
    assert time.perf_counter() - start < 2
    for split in SPLITS:
        assert again.sequences[split].names == dm.sequences[split].names
        assert np.array_equal(again.sequences[split].points, dm.sequences[split].points)

    # a corrupted cache file is detected and rebuilt
    victim = dm.cache_dir / "valid.npy"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    victim.write_bytes(bytes(data))
    third = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0), progress=False)
    with caplog.at_level(logging.WARNING):
        third.setup()
    assert "corrupt" in caplog.text
    assert np.array_equal(third.sequences["valid"].points, dm.sequences["valid"].points)

    # other split parameters make another cache
    other = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0, iam_seed=5))
    assert not other.cache_is_valid()


@needs_sample
def test_official_split_on_sample(tmp_path, caplog) -> None:
    cfg = config(tmp_path, SAMPLE, iam_min_points=0, iam_split="official")
    dm = IAMOnDBDataModule(cfg, progress=False)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    forms = {s: {n.rsplit("-", 1)[0] for n in dm.sequences[s].names} for s in SPLITS}
    assert forms["train"] == {"a01-020x", "a01-000u", "a02-000"}
    assert forms["valid"] == forms["test"] == {"a02-050"}
    assert len(dm.sequences["train"]) == 22 and len(dm.sequences["valid"]) == 8
    assert "test is the validation set" in caplog.text


def test_missing_data_says_what_to_fetch(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(iam.USER_ENV, raising=False)
    monkeypatch.delenv(iam.PASSWORD_ENV, raising=False)
    dm = IAMOnDBDataModule(config(tmp_path), progress=False)
    with pytest.raises(DataError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert iam.LINESTROKES_URL in message and str(dm.data_dir) in message
    assert iam.USER_ENV in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds neither"):
        IAMOnDBDataModule(config(tmp_path, empty), progress=False).prepare_data()


@needs_sample
def test_download_uses_the_credentials_and_stores_none(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv(iam.USER_ENV, "someone")
    monkeypatch.setenv(iam.PASSWORD_ENV, "s3cret-pass")
    calls = []

    def fake_fetch(url, dest, sha256, *, progress=True, auth=None, **_):
        calls.append((url, auth))
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tarfile.open(dest, "w:gz") as tar:
            tar.add(SAMPLE / "lineStrokes", arcname="lineStrokes")
        return dest

    monkeypatch.setattr(iam, "fetch", fake_fetch)
    dm = IAMOnDBDataModule(config(tmp_path, iam_min_points=0), progress=False)
    with caplog.at_level(logging.DEBUG):
        dm.setup()
    assert calls == [(iam.LINESTROKES_URL, ("someone", "s3cret-pass"))]
    assert sum(len(dm.sequences[s]) for s in SPLITS) == 30
    stored = b"".join(p.read_bytes() for p in dm.data_dir.rglob("*") if p.is_file())
    assert b"s3cret-pass" not in stored and "s3cret-pass" not in caplog.text


# ---------------------------------------------------------------------------------------------
# batches


def test_collate_pads_and_masks_and_never_counts_padding() -> None:
    gen = torch.Generator().manual_seed(0)
    items = [torch.randn(n, 3, generator=gen) for n in (3, 6, 2)]
    inputs, targets, mask, lengths = collate_sequences(items)
    assert inputs.shape == targets.shape == (5, 3, 3) and mask.shape == (5, 3)
    assert mask.dtype == torch.bool and lengths.tolist() == [2, 5, 1]
    assert mask.sum(0).tolist() == [2, 5, 1]
    for b, x in enumerate(items):
        n = len(x) - 1
        assert torch.equal(inputs[:n, b], x[:-1]) and torch.equal(targets[:n, b], x[1:])
        assert not inputs[n:, b].any() and not targets[n:, b].any()
    # a per-point score summed under the mask equals the sum over the real targets only
    score = targets.sum(-1) + 100.0 * (~mask)  # padding would add 100 per step
    expected = sum(float(x[1:].sum()) for x in items)
    assert float((score * mask).sum()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        collate_sequences([torch.zeros(1, 3)])


def test_training_batches_cover_each_sequence_once_sorted_and_reshuffled() -> None:
    lengths = np.random.default_rng(0).integers(2, 500, 1000)
    sampler = LengthBatchSampler(lengths, 16, shuffle=True, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 63  # 62 full batches and one of 8
    assert sorted(i for b in first for i in b) == list(range(1000))
    second = list(sampler)  # the next epoch: another order
    assert first != second
    sampler.set_epoch(0)
    assert list(sampler) == first  # the same epoch gives the same batches
    spread = np.mean([np.ptp(lengths[b]) for b in first])
    assert spread < 0.3 * np.ptp(lengths)  # bucketing: similar lengths together


def test_ranks_share_training_and_evaluation_batches() -> None:
    lengths = np.random.default_rng(1).integers(2, 500, 101)
    whole = LengthBatchSampler(lengths, 8, shuffle=True, seed=2)
    ranks = [
        LengthBatchSampler(lengths, 8, shuffle=True, seed=2, rank=r, world_size=2) for r in (0, 1)
    ]
    per_rank = [list(s) for s in ranks]
    assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])  # same number of steps
    for g, batch in enumerate(whole.global_batches(0)):
        assert sorted(per_rank[0][g] + per_rank[1][g]) == sorted(batch.tolist())
    with pytest.raises(DataError, match="divisible"):
        LengthBatchSampler(lengths, 7, shuffle=True, world_size=2)
    evals = [LengthBatchSampler(lengths, 8, shuffle=False, rank=r, world_size=3) for r in range(3)]
    seen = [i for s in evals for b in s for i in b]
    assert sorted(seen) == list(range(101))  # every sequence exactly once, on one rank
    assert all(len(list(s)) == len(s) for s in evals)


@needs_sample
def test_dataloader_batches_from_sample(tmp_path) -> None:
    dm = IAMOnDBDataModule(config(tmp_path, SAMPLE, iam_min_points=0), progress=False)
    dm.setup()
    total = 0
    for inputs, _targets, mask, lengths in dm.train_dataloader():
        assert inputs.shape[1] <= 4 and inputs.shape[0] == int(lengths.max())
        assert int(mask.sum()) == int(lengths.sum())
        total += int(lengths.sum())
    assert total == int((dm.sequences["train"].lengths - 1).sum())
    assert sum(len(b[3]) for b in dm.val_dataloader()) == len(dm.sequences["valid"])


def test_sequence_set_round_trip() -> None:
    seqs = [np.full((n, 3), n, np.float32) for n in (2, 4, 3)]
    store = SequenceSet.from_list(["a", "b", "c"], seqs)
    assert len(store) == 3 and store.lengths.tolist() == [2, 4, 3]
    assert all(np.array_equal(store[i], s) for i, s in enumerate(seqs))
    with pytest.raises(IndexError):
        store[3]


# ---------------------------------------------------------------------------------------------
# the full archive


@pytest.fixture(scope="module")
def full_archive() -> dict[str, np.ndarray]:
    start = time.perf_counter()
    sequences = read_archive(FULL / "lineStrokes-all.tar.xz")
    print(f"parsed {len(sequences):,} line files in {time.perf_counter() - start:.1f} s")
    return sequences


@pytest.mark.slow
@pytest.mark.data
@needs_full
def test_full_archive_counts_and_splits(full_archive, tmp_path, monkeypatch) -> None:
    lengths = np.array([len(v) for v in full_archive.values()])
    assert len(full_archive) == 12_195
    assert int((lengths >= 300).sum()) == 11_628
    assert lengths[lengths >= 300].mean() == pytest.approx(648.4, abs=0.05)
    splits = build_splits(full_archive)
    assert {s: len(v) for s, v in splits.items()} == {"train": 10_465, "valid": 581, "test": 582}
    lists = {n: read_form_list(LISTS / f"{n}.txt") for n in iam.OFFICIAL_LISTS}
    official = build_splits(full_archive, mode="official", official_lists=lists)
    assert len(official["train"]) == 10_232 and len(official["valid"]) == 1_381

    # the DataModule on the reference archive (parsing reused from the fixture)
    monkeypatch.setattr(IAMOnDBDataModule, "read_source", lambda self, source: full_archive)
    dm = IAMOnDBDataModule(config(tmp_path, FULL), progress=False)
    dm.prepare_data()
    assert dm.cache_is_valid()
    fresh = IAMOnDBDataModule(config(tmp_path, FULL), progress=False)
    start = time.perf_counter()
    fresh.setup()
    assert time.perf_counter() - start < 5
    assert {s: len(fresh.sequences[s]) for s in SPLITS} == {
        "train": 10_465,
        "valid": 581,
        "test": 582,
    }
    assert fresh.sequences["valid"].names == splits["valid"]
    assert fresh.info["kept"] == 11_628 and fresh.info["line_files"] == 12_195
    print(f"normalisation mean {fresh.mean}, std {fresh.std}")


def test_archive_errors_name_the_member(tmp_path) -> None:
    archive = tmp_path / "lineStrokes-all.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("lineStrokes/a01/a01-000/a01-000u-01.xml")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"<oops"))
    with pytest.raises(IAMFormatError, match=r"a01-000u-01\.xml"):
        read_archive(archive)
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="not a readable tar archive"):
        read_archive(broken)


def test_training_loader_resumes_mid_epoch_with_the_next_batch() -> None:
    from datamodules.iam import LengthBatchSampler
    from datamodules.stream import ResumableLoader

    lengths = np.random.default_rng(0).integers(300, 900, size=200)
    data = list(range(200))

    def loader() -> ResumableLoader:
        sampler = LengthBatchSampler(lengths, 16, shuffle=True, seed=3)
        sampler.set_epoch(2)
        return ResumableLoader(data, sampler, collate_fn=lambda items: list(items))

    whole = list(loader())
    first = loader()
    it = iter(first)
    done = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state == {"consumed": 5} and done == whole[:5]
    resumed = loader()
    resumed.load_state_dict(state)
    assert list(resumed) == whole[5:]
    assert len(resumed) == len(whole)  # Lightning's counters continue from the checkpoint
