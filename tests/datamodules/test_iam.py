"""IAM-OnDB's DataModule: sources, splits, normalisation, the cache and its batches."""

from __future__ import annotations

import logging
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

import datamodules.iam as iam
from datamodules.base import SPLITS, DataError
from datamodules.iam import IAMOnDBDataModule
from datamodules.iam_format import LINESTROKES_URL, parse_line_strokes, read_archive
from datamodules.iam_splits import OFFICIAL_LISTS, build_splits, read_form_list
from tests.datamodules.iam_files import (
    FULL,
    LISTS,
    SAMPLE,
    SAMPLE_FILES,
    config,
    needs_full,
    needs_sample,
)


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
    assert again.cache.is_valid()
    start = time.perf_counter()
    again.setup()
    assert time.perf_counter() - start < 2
    for split in SPLITS:
        assert again.sequences[split].names == dm.sequences[split].names
        assert np.array_equal(again.sequences[split].points, dm.sequences[split].points)

    # a corrupted cache file is detected and rebuilt
    victim = dm.folders.cache_dir / "valid.npy"
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
    assert not other.cache.is_valid()


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
    assert LINESTROKES_URL in message and str(dm.folders.data_dir) in message
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
    assert calls == [(LINESTROKES_URL, ("someone", "s3cret-pass"))]
    assert sum(len(dm.sequences[s]) for s in SPLITS) == 30
    stored = b"".join(p.read_bytes() for p in dm.folders.data_dir.rglob("*") if p.is_file())
    assert b"s3cret-pass" not in stored and "s3cret-pass" not in caplog.text


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
    lists = {n: read_form_list(LISTS / f"{n}.txt") for n in OFFICIAL_LISTS}
    official = build_splits(full_archive, mode="official", official_lists=lists)
    assert len(official["train"]) == 10_232 and len(official["valid"]) == 1_381

    # the DataModule on the reference archive (parsing reused from the fixture)
    monkeypatch.setattr(IAMOnDBDataModule, "read_source", lambda self, source: full_archive)
    dm = IAMOnDBDataModule(config(tmp_path, FULL), progress=False)
    dm.prepare_data()
    assert dm.cache.is_valid()
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
