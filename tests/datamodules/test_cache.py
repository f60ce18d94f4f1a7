"""The cache protocol on its own: a data set of one array, built once and then read back."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules.base import DataError
from datamodules.cache import DataCache, DataFolders, npy_array, npy_bytes


class Squares:
    """A CacheSource: the squares of the numbers in a source folder's ``*.txt`` files."""

    def __init__(self, root: Path, source: Path, scale: int = 1) -> None:
        self.source, self.scale, self.builds = source, scale, 0
        self.cache: DataCache[np.ndarray] = DataCache(
            DataFolders("squares", str(root), str(source)), self, folder_files=self.texts
        )

    @staticmethod
    def texts(folder: Path) -> list[Path]:
        return sorted(folder.glob("*.txt"))

    def source_paths(self) -> list[Path] | None:
        return [self.source] if self.source.is_dir() else None

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def build(self) -> np.ndarray:
        self.builds += 1
        numbers = [int(p.read_text()) for p in self.texts(self.source)]
        squares = self.scale * np.array(numbers, dtype=np.int64) ** 2
        self.cache.notes.append(f"{len(numbers)} numbers")
        self.cache.write([self.source], {"squares.npy": npy_bytes(squares)}, {"count": 2})
        return squares

    def decode(self, blobs: dict[str, bytes], manifest: dict[str, Any]) -> np.ndarray:
        return npy_array(blobs["squares.npy"])


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "numbers"
    folder.mkdir()
    for i in (2, 3):
        (folder / f"{i}.txt").write_text(str(i))
    return folder


def test_built_once_then_read_with_its_notes(tmp_path: Path, source: Path, caplog) -> None:
    first = Squares(tmp_path / "root", source)
    first.cache.prepare()
    first.cache.prepare()  # valid now: not built again
    assert first.builds == 1 and first.cache.load().tolist() == [4, 9]
    manifest = json.loads(first.cache.folders.manifest_path.read_text())
    assert list(manifest) == ["format", "dataset", "params", "sources", "cache", "count", "notes"]
    assert manifest["sources"][0]["files"] == 2 and manifest["notes"] == ["2 numbers"]
    again = Squares(tmp_path / "root", source)
    with caplog.at_level(logging.WARNING):
        assert again.cache.load().tolist() == [4, 9]
    assert again.builds == 0 and "squares: 2 numbers" in caplog.text


def test_rebuilt_for_other_parameters_a_changed_folder_or_a_corrupt_blob(
    tmp_path: Path, source: Path, caplog
) -> None:
    Squares(tmp_path / "root", source).cache.load()
    other = Squares(tmp_path / "root", source, scale=2)
    assert not other.cache.is_valid() and other.cache.load().tolist() == [8, 18]
    (source / "notes.md").write_text("not counted")  # a file the folder record leaves out
    assert Squares(tmp_path / "root", source, scale=2).cache.is_valid()
    (source / "4.txt").write_text("4")
    grown = Squares(tmp_path / "root", source, scale=2)
    assert not grown.cache.is_valid() and grown.cache.load().tolist() == [8, 18, 32]
    blob = grown.cache.folders.cache_dir / "squares.npy"
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x01")  # same size, another digest
    flipped = Squares(tmp_path / "root", source, scale=2)
    assert flipped.cache.is_valid()  # sizes only: the digests are checked on reading
    with caplog.at_level(logging.WARNING):
        assert flipped.cache.load().tolist() == [8, 18, 32] and flipped.builds == 1
    assert "corrupt" in caplog.text


def test_an_unwritable_root_is_named_before_building(tmp_path: Path, source: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    squares = Squares(blocker / "data", source)
    with pytest.raises(DataError, match=r"data.root='.*a-file/data': cannot write .*writable"):
        squares.cache.prepare()
    assert squares.builds == 0
