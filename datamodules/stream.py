"""Character streams for truncated BPTT: a vocabulary, contiguous per-rank shards, segments.

A split's token stream of N symbols is cut into B rows of equal length (the global batch size;
the tail that does not fill a row is dropped), row b holding tokens [b*L, (b+1)*L). DDP rank r of
W takes rows [r*B/W, (r+1)*B/W): a contiguous shard, so the state carried from one batch to the
next continues the same text on every rank, and W ranks see exactly the rows one process would.
Segment i of a shard is its columns [i*T, i*T + T] (T+1 tokens: inputs and shifted targets).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hmrnn.config import DataConfig

SPLITS = ("train", "valid", "test")
log = logging.getLogger(__name__)


class DataError(ValueError):
    """Missing, corrupt or unusable data; the message names the file and what to do."""


@dataclass(frozen=True)
class Vocabulary:
    """The symbols of a data set in id order; saved with checkpoints so text decodes the same."""

    symbols: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols):
            raise ValueError("vocabulary symbols must be distinct")

    def __len__(self) -> int:
        return len(self.symbols)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        return cls(tuple(sorted(set(text))))

    def encode(self, text: str) -> np.ndarray:
        """Characters to ids (uint8 when the vocabulary fits, else int32)."""
        index = {s: i for i, s in enumerate(self.symbols)}
        dtype = np.uint8 if len(self) <= 256 else np.int32
        try:
            return np.fromiter((index[ch] for ch in text), dtype=dtype, count=len(text))
        except KeyError as error:
            raise DataError(f"symbol {error.args[0]!r} is not in the vocabulary") from error

    def decode(self, ids: Any) -> str:
        return "".join(self.symbols[int(i)] for i in ids)

    def to_json(self) -> str:
        return json.dumps(list(self.symbols))

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(tuple(json.loads(text)))


class StreamSegments(Dataset):
    """Consecutive (T+1, B_local) windows of one rank's rows of a token stream.

    Args:
        tokens: (N,) integer ids of the whole split.
        rows: B, the global number of rows.
        bptt: T.
        rank, world_size: this process's share of the rows (contiguous).

    Item i: int64 tensor (T_i + 1, B_local), time-major; T_i = T except for a shorter last one.
    """

    def __init__(
        self, tokens: np.ndarray, rows: int, bptt: int, rank: int = 0, world_size: int = 1
    ) -> None:
        if rows % world_size:
            raise DataError(
                f"data.batch_size={rows} must be divisible by the number of processes "
                f"({world_size}) so that every rank holds the same number of rows"
            )
        length = len(tokens) // rows
        if length < 2:
            raise DataError(
                f"a split of {len(tokens)} symbols is too short for {rows} rows: each row needs "
                "at least 2 symbols; lower data.batch_size"
            )
        local = rows // world_size
        grid = np.asarray(tokens[: rows * length]).reshape(rows, length)
        self.data = np.ascontiguousarray(grid[rank * local : (rank + 1) * local].T)  # (L, B_local)
        self.bptt = bptt
        self.rows, self.local_rows, self.row_length = rows, local, length
        self.first_row = rank * local

    def __len__(self) -> int:
        return math.ceil((self.row_length - 1) / self.bptt)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        start = i * self.bptt
        stop = min(start + self.bptt, self.row_length - 1)
        return torch.from_numpy(self.data[start : stop + 1].astype(np.int64))

    def positions(self, i: int) -> np.ndarray:
        """(T_i, B_local) stream positions of segment i's inputs (to look up true boundaries)."""
        start = i * self.bptt
        stop = min(start + self.bptt, self.row_length - 1)
        rows = np.arange(self.first_row, self.first_row + self.local_rows)
        return rows[None, :] * self.row_length + np.arange(start, stop)[:, None]


class _FromOffset(Sampler[int]):
    """0, 1, ..., n-1, or from ``start`` once after a mid-epoch resume."""

    def __init__(self, n: int) -> None:
        self.n, self.start = n, 0

    def __len__(self) -> int:  # the full epoch: Lightning's counters continue from a checkpoint
        return self.n

    def __iter__(self):  # not a generator: ``start`` is read when the iterator is made
        start, self.start = self.start, 0
        return iter(range(start, self.n))


class ResumableLoader(DataLoader):
    """A training loader that can continue mid-epoch.

    Lightning saves ``state_dict()`` of the train dataloader in each checkpoint (under
    ``loops/fit_loop/state_dict/combined_loader``) and calls ``load_state_dict()`` before iterating
    an unfinished epoch, so a resumed run continues with exactly the next batch. The order comes
    from ``batch_sampler`` (any sampler with a ``start`` attribute that it skips to once) or, by
    default, the dataset's items in order, one item per batch. The loader has its own random
    generator: iterating draws nothing from the global one.
    """

    def __init__(self, dataset: Dataset, batch_sampler: Any = None, **kwargs: Any) -> None:
        common = {"num_workers": 0, "generator": torch.Generator(), **kwargs}
        if batch_sampler is None:
            self._order: Any = _FromOffset(len(dataset))  # type: ignore[arg-type]
            super().__init__(dataset, batch_size=None, sampler=self._order, **common)
        else:
            self._order = batch_sampler
            super().__init__(dataset, batch_sampler=batch_sampler, **common)
        self.consumed = 0  # batches handed out in the current epoch

    def __iter__(self):
        self.consumed = self._order.start
        return self._counting(super().__iter__())

    def _counting(self, batches):
        for batch in batches:
            self.consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._order.start = state["consumed"] % max(len(self._order), 1)
        self.consumed = self._order.start


AT_DELIMITER = "_at_delim"  # hmrnn.core.analysis.AT_DELIMITER: the kinds' second convention


def mark_boundaries(
    tokens: np.ndarray,
    before: list[int],
    at: list[int],
    delimiters: list[int],
    *,
    at_delimiter: bool = False,
) -> np.ndarray:
    """True at t when x_t is not a delimiter and x_{t+1} is in ``before``, or x_t is in ``at``
    (see :meth:`CharStreamDataModule.truth_rules`); the last position has no x_{t+1}.

    ``at_delimiter``: the delimiter convention, the ``before`` rule one step later, on the step
    that reads the delimiter: x_t is in ``before`` and x_{t-1} is not a delimiter (the first
    position, without x_{t-1}, counts as following none), or x_t is in ``at``.
    """
    tokens = np.asarray(tokens)
    out = np.isin(tokens, np.asarray(at, dtype=tokens.dtype))
    closes = np.isin(tokens, np.asarray(before, dtype=tokens.dtype))  # x_t closes a unit
    inside = ~np.isin(tokens, np.asarray(delimiters, dtype=tokens.dtype))  # x_t is in a unit
    if at_delimiter:
        out[:1] |= closes[:1]
        out[1:] |= inside[:-1] & closes[1:]
    else:
        out[:-1] |= inside[:-1] & closes[1:]
    return out


class CharStreamDataModule(L.LightningDataModule):
    """Base of the character data sets: subclasses provide the token streams and vocabulary.

    Subclasses implement :meth:`load` (and may override :meth:`prepare_data` to download).
    Shards follow ``self.trainer``'s rank and world size, so ``Trainer(use_distributed_sampler=
    False)`` is required (``hmrnn.train`` sets it).
    """

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config
        self.tokens: dict[str, np.ndarray] = {}
        self.vocab: Vocabulary | None = None

    # -- what a data set provides
    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        """The encoded ``train`` / ``valid`` / ``test`` streams and the vocabulary."""
        raise NotImplementedError

    def truth_rules(self) -> dict[str, tuple[list[int], list[int]]]:
        """Each kind of true boundary as ``(before, at)`` symbol ids: t is a boundary of that
        kind when x_t is not a delimiter and x_{t+1} is in ``before`` (t is the last symbol of
        a unit), or when x_t itself is in ``at``. Default: ``word`` before each delimiter.

        A kind with a ``before`` rule is also scored in the delimiter convention, as
        ``{kind}_at_delim`` (the step that reads the delimiter, one step later; see
        :func:`mark_boundaries`)."""
        ids = self.delimiter_ids()
        return {"word": (ids, [])} if ids else {}

    def boundaries(self, split: str) -> dict[str, np.ndarray]:
        """True boundaries of a split by kind (e.g. ``word``, and ``word_at_delim`` in the
        delimiter convention), bool arrays over the stream, by :meth:`truth_rules` (the rules
        the validation metrics apply to each batch)."""
        self.setup()
        tokens, delimiters = self.tokens[split], self.delimiter_ids()
        out = {}
        for kind, (before, at) in self.truth_rules().items():
            out[kind] = mark_boundaries(tokens, before, at, delimiters)
            if before:
                out[kind + AT_DELIMITER] = mark_boundaries(
                    tokens, before, at, delimiters, at_delimiter=True
                )
        return out

    def delimiter_ids(self) -> list[int]:
        """Ids of the symbols that separate words (what ``model=fixed_boundary`` counts with
        ``model.fixed_source=delimiter``); empty where the data set has none."""
        return []

    def symbol_ids(self, symbols: str | list[str]) -> list[int]:
        """Ids of those of ``symbols`` that are in the vocabulary."""
        self.setup()
        assert self.vocab is not None
        index = {s: i for i, s in enumerate(self.vocab.symbols)}
        return [index[s] for s in symbols if s in index]

    # -- Lightning
    def setup(self, stage: str | None = None) -> None:
        if not self.tokens:
            self.tokens, self.vocab = self.load()

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def segments(self, split: str, *, all_rows: bool = False) -> StreamSegments:
        """This rank's segments of a split (every row with ``all_rows``)."""
        self.setup()
        rows = self.config.batch_size
        if split != "train" and self.config.eval_batch_size:
            rows = self.config.eval_batch_size
        rank, world = (0, 1) if all_rows else self._rank()
        return StreamSegments(self.tokens[split], rows, self.config.bptt, rank, world)

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=0, generator=torch.Generator()
        )

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.segments("train"))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.segments("valid"))

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.segments("test"))

    @property
    def vocab_size(self) -> int:
        self.setup()
        assert self.vocab is not None
        return len(self.vocab)


class DataFolders:
    """Where a data set's files live: ``data.local_dir`` or ``<data.root>/<NAME>`` and its cache.

    A mixin for DataModules with ``self.config`` (a DataConfig) and a class attribute ``NAME``.
    """

    NAME = ""
    CACHE_FORMAT = 1  # bump when a cache layout changes: older caches are rebuilt
    config: DataConfig

    @property
    def local_dir(self) -> Path | None:
        """``data.local_dir`` (take the files from there, no download) or None."""
        value = self.config.local_dir
        return Path(value).expanduser() if value else None

    @property
    def data_dir(self) -> Path:
        """``<data.root>/<NAME>``: downloads and extracted files."""
        return Path(self.config.root).expanduser() / self.NAME

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / "manifest.json"

    # A data set's cache: subclasses provide ``cache_is_valid()``, ``build()`` (which writes the
    # cache and keeps its result in ``_built`` for the next ``load()``), ``_read_cache()`` (None
    # when absent or unreadable) and ``notes`` (warnings recorded with the cache).
    _built: Any = None
    notes: list[str]

    def prepare_data(self) -> None:
        """Build the cache once (Lightning calls this on one process per node)."""
        if not self.cache_is_valid():  # type: ignore[attr-defined]
            self.check_writable()
            self.build()  # type: ignore[attr-defined]

    def check_writable(self) -> None:
        """DataError naming ``data.root`` unless the data set's folder can be created and
        written (downloads and the cache go there), before anything is fetched or built."""
        probe = self.data_dir / f".write-test-{os.getpid()}"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise DataError(
                f"data.root={str(self.config.root)!r}: cannot write {self.data_dir} "  # type: ignore[attr-defined]
                f"({error.strerror or error}); set data.root to a writable folder"
            ) from error

    def load(self) -> Any:
        """The data set from its cache, built first when needed; the cache's notes are logged."""
        result, self._built = self._built, None
        if result is None:
            result = self._read_cache()  # type: ignore[attr-defined]
        if result is None:
            self.check_writable()
            result = self.build()  # type: ignore[attr-defined]
            self._built = None
        for note in self.notes:
            log.warning("%s: %s", self.NAME, note)
        return result

    def matching_manifest(
        self, sources: list[Path] | None, same_source: Callable[[dict[str, Any], Path], bool]
    ) -> dict[str, Any] | None:
        """The cache manifest when it was made by this format, data set, parameters and sources
        and its files have their recorded sizes; None (rebuild) otherwise.

        Subclasses provide ``CACHE_FORMAT`` and ``params()``; ``same_source(record, path)``
        says whether a source file still matches its record.
        """
        if sources is None or not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            log.warning("%s is unreadable; rebuilding the cache", self.manifest_path)
            return None
        params = self.params()  # type: ignore[attr-defined]
        expected = {"format": self.CACHE_FORMAT, "dataset": self.NAME, "params": params}
        if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in expected.items()):
            log.info("the cache in %s was made differently; rebuilding it", self.cache_dir)
            return None
        records = manifest.get("sources", [])
        if len(records) != len(sources) or not all(
            same_source(r, p) for r, p in zip(records, sources, strict=True)
        ):
            log.info("the source files of %s changed; rebuilding the cache", self.cache_dir)
            return None
        for name, entry in manifest.get("cache", {}).items():
            path = self.cache_dir / name
            if not path.is_file() or path.stat().st_size != entry.get("size"):
                log.warning("cache file %s is missing or has the wrong size; rebuilding", path)
                return None
        return manifest
