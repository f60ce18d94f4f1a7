"""IAM On-Line Handwriting Database (IAM-OnDB): pen trajectories for handwriting modelling.

Per point the model reads and predicts ``(dx, dy, pen_up)``: the offset from the previous point
(``(0, 0)`` for a line's first point; offsets continue across strokes, so the jump between two
strokes is an ordinary offset) and a flag that is 1 on the last point of every stroke
(model.md §§3 and 6). ``dx`` and ``dy`` are normalised by the mean and standard deviation (ddof 0)
of all points of the training split; ``pen_up`` is left as is.

Where the files come from:

* ``data.local_dir`` set: a folder that holds the extracted ``lineStrokes/`` tree, or the archive
  ``lineStrokes-all.tar.gz`` / ``lineStrokes-all.tar.xz`` (read member by member, never extracted),
  or ``local_dir`` is such an archive or ``lineStrokes`` folder itself. Nothing is downloaded.
* otherwise ``<data.root>/iam_ondb/`` is looked at (a ``lineStrokes/`` tree or the archive); when
  neither is there the official archive is downloaded into it with the user's own FKI credentials
  taken from the environment variables ``IAM_ONDB_USER`` and ``IAM_ONDB_PASSWORD`` (never stored
  or logged). Without credentials :class:`DataError` says what to fetch from where.

Splits (``data.iam_split``):

* ``random`` (default, the paper's setup as reconstructed in model.md §6): every line file with
  at least ``min_points`` (300) points is pooled; the names are sorted, permuted with
  ``numpy.random.default_rng(seed).permutation`` (``seed`` = :data:`SPLIT_SEED` = 2017 by
  default), and the first ``n * 90 // 100`` are train, the next ``n * 5 // 100`` valid and the
  rest test (floor rounding, remainder to test): 11,628 files give 10,465 / 581 / 582.
* ``official``: the IAM-OnDB-t1 form lists, as Chung et al. (2015) use them for generation: train =
  ``trainset`` + ``testset_t`` + ``testset_f`` (10,232 lines with >= 300 points), valid =
  ``testset_v`` (1,381). This protocol has no held-out test set: **test is the validation set
  (testset_v)** and a note saying so is logged. Lines of forms in no list (16 ``z0*`` files) are
  left out. The lists are taken from ``data.iam_splits_dir``, ``local_dir``, ``local_dir/splits``,
  ``local_dir/../splits`` or ``<root>/iam_ondb/splits``, or downloaded with the credentials.

Cache (:class:`datamodules.cache.DataCache`, in ``<data.root>/iam_ondb/cache/``): per split
``{split}.npy`` (float32 ``(P, 3)``, every sequence's normalised points concatenated) and
``{split}_offsets.npy`` (int64 ``(n + 1,)``: sequence i is rows ``offsets[i]:offsets[i + 1]``),
then ``manifest.json`` (format, split parameters, the source and split-list records, each cache
file's size and sha256, the line names of each split in order, the normalisation statistics,
counts and notes). Every file is written atomically and the manifest last; a changed source or a
cache file whose digest differs causes a rebuild.

Batches: whole sequences, padded to the longest in the batch (:mod:`datamodules.sequences`):
time-major ``(inputs (T, B, 3), targets (T, B, 3), mask (T, B) bool, lengths (B,))`` with
inputs = points[:-1], targets = points[1:], so every real target point is counted once and padding
never. Training batches are bucketed by length and reshuffled every epoch by a seeded generator;
see :class:`~datamodules.sequences.LengthBatchSampler` for how DDP ranks share them.

The line files are parsed by :mod:`datamodules.iam_format`, the splits built by
:mod:`datamodules.iam_splits`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.base import SPLITS, DataError, DataSetModule
from datamodules.cache import DataCache, DataFolders, npy_array, npy_bytes
from datamodules.download import fetch
from datamodules.iam_format import (
    ARCHIVES,
    BASE_URL,
    LINESTROKES_URL,
    read_archive,
    read_tree,
    tree_files,
)
from datamodules.iam_splits import (
    MIN_POINTS,
    OFFICIAL_LISTS,
    SPLIT_SEED,
    build_splits,
    normalisation,
    read_form_list,
)
from datamodules.sequences import (
    HandwritingSequences,
    LengthBatchSampler,
    SequenceSet,
    collate_sequences,
)
from datamodules.stream import ResumableLoader
from hmrnn.config import DataConfig

log = logging.getLogger(__name__)

USER_ENV, PASSWORD_ENV = "IAM_ONDB_USER", "IAM_ONDB_PASSWORD"
Splits = tuple[dict[str, SequenceSet], dict[str, Any]]
"""What IAM-OnDB loads: the normalised sequences of each split, and ``info`` (the normalisation
``mean`` and ``std`` of dx and dy, and counts of the line files and points)."""


class IAMOnDBDataModule(DataSetModule):
    """IAM-OnDB line trajectories as ``(dx, dy, pen_up)`` sequences (see the module docstring).

    Reads from ``config``: ``root``, ``local_dir``, ``batch_size``, ``eval_batch_size`` and,
    with ``getattr`` and a default, ``iam_split`` ("random"), ``iam_seed`` (2017),
    ``iam_min_points`` (300) and ``iam_splits_dir`` (""). ``seed`` of the training order is
    ``iam_seed`` too. ``folders`` says where the files live, ``cache`` keeps the parsed splits.
    """

    NAME: ClassVar[str] = "iam_ondb"
    kind: ClassVar[str] = "handwriting"
    input_size: ClassVar[int] = 3

    def __init__(self, config: DataConfig, *, progress: bool = True) -> None:
        super().__init__(config)
        self.progress = progress
        self.sequences: dict[str, SequenceSet] = {}
        self.mean = np.zeros(2)
        self.std = np.ones(2)
        self.info: dict[str, Any] = {}
        self.folders = DataFolders.of(self.NAME, config)
        self.cache: DataCache[Splits] = DataCache(self.folders, self, folder_files=tree_files)

    # -- settings
    @property
    def split_mode(self) -> str:
        return str(getattr(self.config, "iam_split", "random") or "random")

    @property
    def seed(self) -> int:
        return int(getattr(self.config, "iam_seed", SPLIT_SEED))

    @property
    def min_points(self) -> int:
        return int(getattr(self.config, "iam_min_points", MIN_POINTS))

    def params(self) -> dict[str, Any]:
        return {"mode": self.split_mode, "seed": self.seed, "min_points": self.min_points}

    # -- sources
    @staticmethod
    def _find_in(folder: Path) -> Path | None:
        """A ``lineStrokes`` tree or archive at or in ``folder``; None when there is none."""
        if folder.is_file():
            return folder
        if folder.name == "lineStrokes" and folder.is_dir():
            return folder
        if (folder / "lineStrokes").is_dir():
            return folder / "lineStrokes"
        for name in ARCHIVES:
            if (folder / name).is_file():
                return folder / name
        return None

    def source_path(self) -> Path | None:
        """The tree or archive the cache is built from, without downloading (None if none)."""
        local, data_dir = self.folders.local_dir, self.folders.data_dir
        if local is not None:
            return self._find_in(local)
        return self._find_in(data_dir) if data_dir.is_dir() else None

    @staticmethod
    def _credentials() -> tuple[str, str] | None:
        user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
        return (user, password) if user and password else None

    def _missing(self, what: str, where: Path, url: str) -> DataError:
        return DataError(
            f"IAM-OnDB {what} is not available: register at {BASE_URL}/ (non-commercial research "
            f"use), then either download {url} yourself and put it in {where} (or set "
            f"data.local_dir to the folder that holds it), or set {USER_ENV} and {PASSWORD_ENV} "
            "to your FKI login so that it is downloaded for you"
        )

    def fetch_source(self) -> Path:
        source, local = self.source_path(), self.folders.local_dir
        if source is not None:
            return source
        if local is not None:
            raise DataError(
                f"data.local_dir={str(local)!r} holds neither a lineStrokes/ folder nor "
                f"{' / '.join(ARCHIVES[:2])}; put the extracted tree or the archive from "
                f"{LINESTROKES_URL} there, or leave data.local_dir empty to download it"
            )
        auth, target = self._credentials(), self.folders.data_dir / ARCHIVES[0]
        if auth is None:
            raise self._missing("lineStrokes-all.tar.gz", self.folders.data_dir, LINESTROKES_URL)
        return fetch(LINESTROKES_URL, target, None, progress=self.progress, auth=auth)

    def _list_folders(self) -> list[Path]:
        folders = []
        explicit = getattr(self.config, "iam_splits_dir", "") or ""
        if explicit:
            folders.append(Path(explicit).expanduser())
        local, data_dir = self.folders.local_dir, self.folders.data_dir
        if local is not None:
            base = local.parent if local.is_file() else local
            folders += [base, base / "splits", base.parent / "splits"]
        return [*folders, data_dir, data_dir / "splits"]

    def list_paths(self, download: bool = False) -> list[Path] | None:
        """The four official form lists (None when not all are found and ``download`` is off)."""
        for folder in self._list_folders():
            files = [folder / f"{name}.txt" for name in OFFICIAL_LISTS]
            if all(f.is_file() for f in files):
                return files
        if not download:
            return None
        target = self.folders.data_dir / "splits"
        auth = self._credentials()
        if auth is None:
            raise self._missing(
                "the official split lists (trainset.txt, testset_v.txt, testset_t.txt, "
                "testset_f.txt)",
                target,
                f"{BASE_URL}/trainset.txt (and the other three)",
            )
        return [
            fetch(f"{BASE_URL}/{name}.txt", target / f"{name}.txt", None, auth=auth)
            for name in OFFICIAL_LISTS
        ]

    def source_paths(self) -> list[Path] | None:
        """The line files' tree or archive, and in the official split the four form lists."""
        source = self.source_path()
        if source is None:
            return None
        if self.split_mode != "official":
            return [source]
        lists = self.list_paths()
        return None if lists is None else [source, *lists]

    # -- building and reading the cache
    def read_source(self, source: Path) -> dict[str, np.ndarray]:
        return read_tree(source) if source.is_dir() else read_archive(source)

    def build(self) -> Splits:
        """Parse every line file, split, normalise and (re)write the cache."""
        source = self.fetch_source()
        lists = self.list_paths(download=True) if self.split_mode == "official" else None
        log.info("parsing the IAM-OnDB line files in %s", source)
        sequences = self.read_source(source)
        names = self._split(sequences, source, lists)
        mean, std = normalisation([sequences[n] for n in names["train"]])
        scale = np.array([*(1 / std), 1.0], dtype=np.float64)
        shift = np.array([*mean, 0.0], dtype=np.float64)
        sets = {}
        for split in SPLITS:
            raw = SequenceSet.from_list(names[split], [sequences[n] for n in names[split]])
            raw.points = ((raw.points - shift) * scale).astype(np.float32)
            sets[split] = raw
        info = {"mean": mean.tolist(), "std": std.tolist(), **self._stats(sequences)}
        self._write([source, *(lists or [])], sets, info)
        return sets, info

    def _split(
        self, sequences: dict[str, np.ndarray], source: Path, lists: list[Path] | None
    ) -> dict[str, list[str]]:
        """The line names of each split; DataError when one is empty."""
        official = None
        if lists is not None:
            official = {n: read_form_list(p) for n, p in zip(OFFICIAL_LISTS, lists, strict=True)}
            self.cache.notes.append(
                "the official split has no held-out test set: test is the validation set "
                "(testset_v)"
            )
        mode, least = self.split_mode, self.min_points
        names = build_splits(
            sequences, min_points=least, seed=self.seed, mode=mode, official_lists=official
        )
        for split in SPLITS:
            if not names[split]:
                raise DataError(
                    f"the {split} split of {source} is empty ({len(sequences)} line files, "
                    f"{sum(len(v) >= least for v in sequences.values())} with >= "
                    f"{least} points); use the full lineStrokes archive"
                )
        return names

    def _stats(self, sequences: dict[str, np.ndarray]) -> dict[str, Any]:
        lengths = np.array([len(v) for v in sequences.values()])
        kept = lengths >= self.min_points
        return {
            "line_files": len(sequences),
            "points": int(lengths.sum()),
            "kept": int(kept.sum()),
            "kept_mean_length": float(lengths[kept].mean()) if kept.any() else 0.0,
        }

    def _write(
        self, sources: list[Path], sets: dict[str, SequenceSet], info: dict[str, Any]
    ) -> None:
        blobs = {}
        for split in SPLITS:
            blobs[f"{split}.npy"] = npy_bytes(sets[split].points)
            blobs[f"{split}_offsets.npy"] = npy_bytes(sets[split].offsets)
        extra = {
            "normalisation": {"mean": info["mean"], "std": info["std"]},
            "stats": {k: v for k, v in info.items() if k not in ("mean", "std")},
            "counts": {s: len(sets[s]) for s in SPLITS},
            "names": {s: sets[s].names for s in SPLITS},
        }
        self.cache.write(sources, blobs, extra)

    def decode(self, blobs: dict[str, bytes], manifest: dict[str, Any]) -> Splits:
        arrays = {name: npy_array(blob) for name, blob in blobs.items()}
        sets = {
            s: SequenceSet(arrays[f"{s}.npy"], arrays[f"{s}_offsets.npy"], manifest["names"][s])
            for s in SPLITS
        }
        return sets, {**manifest["stats"], **manifest["normalisation"]}

    # -- Lightning
    def prepare_data(self) -> None:
        """Parse and cache once (Lightning calls this on one process per node)."""
        self.cache.prepare()

    def load(self) -> Splits:
        return self.cache.load()

    def setup(self, stage: str | None = None) -> None:
        if not self.sequences:
            self.sequences, self.info = self.load()
            self.mean = np.asarray(self.info["mean"], dtype=np.float64)
            self.std = np.asarray(self.info["std"], dtype=np.float64)

    def denormalise(self, points: np.ndarray | torch.Tensor) -> np.ndarray:
        """(..., 3) normalised points back to pen offsets in the files' units."""
        self.setup()
        out = np.array(points, dtype=np.float64)
        out[..., :2] = out[..., :2] * self.std + self.mean
        return out

    def batch_sampler(self, split: str) -> LengthBatchSampler:
        self.setup()
        rank, world = self._rank()
        return LengthBatchSampler(
            self.sequences[split].lengths,
            self.batch_size_of(split),
            shuffle=split == "train",
            seed=self.seed,
            rank=rank,
            world_size=world,
        )

    def dataloader(self, split: str) -> DataLoader:
        self.setup()
        return DataLoader(
            HandwritingSequences(self.sequences[split]),
            batch_sampler=self.batch_sampler(split),
            collate_fn=collate_sequences,
            num_workers=0,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()  # resumable: a run restored mid-epoch continues with the next batch
        return ResumableLoader(
            HandwritingSequences(self.sequences["train"]),
            self.batch_sampler("train"),
            collate_fn=collate_sequences,
        )

    def val_dataloader(self) -> DataLoader:
        return self.dataloader("valid")

    def test_dataloader(self) -> DataLoader:
        return self.dataloader("test")

    # -- the data set interface
    def train_batches(self) -> int:
        return len(self.batch_sampler("train"))

    def check_batching(self) -> None:
        """DataError when a batch size is not usable (see :class:`LengthBatchSampler`) or the
        training split gives no batch; no split of whole sequences is too short otherwise."""
        for split in SPLITS:
            self.batch_sampler(split)
        if self.train_batches() == 0:
            _, world = self._rank()
            raise DataError(
                f"the training split holds {len(self.sequences['train'])} sequences, fewer than "
                f"the {world} processes; use fewer processes"
            )

    def vocabulary(self) -> None:
        """None: the data are points, not symbols."""
        return None


__all__ = ["PASSWORD_ENV", "USER_ENV", "IAMOnDBDataModule"]
