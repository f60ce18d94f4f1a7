"""Character streams for truncated BPTT: a vocabulary, contiguous per-rank shards, segments.

A split's token stream of N symbols is cut into B rows of equal length (the global batch size;
the tail that does not fill a row is dropped), row b holding tokens [b*L, (b+1)*L). DDP rank r of
W takes rows [r*B/W, (r+1)*B/W): a contiguous shard, so the state carried from one batch to the
next continues the same text on every rank, and W ranks see exactly the rows one process would.
Segment i of a shard is its columns [i*T, i*T + T] (T+1 tokens: inputs and shifted targets).
"""

from __future__ import annotations

import abc
import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.base import SPLITS, DataError, DataSetModule
from hmrnn.config import DataConfig


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


class CharStreamDataModule(DataSetModule):
    """Base of the character data sets (``kind`` "text"): subclasses provide the token streams
    and the vocabulary by implementing :meth:`load`.

    Each split is one stream, cut into rows and segments by :class:`StreamSegments`; shards
    follow ``self.trainer``'s rank and world size.
    """

    kind: ClassVar[str] = "text"

    def __init__(self, config: DataConfig) -> None:
        super().__init__(config)
        self.tokens: dict[str, np.ndarray] = {}
        self.vocab: Vocabulary | None = None

    # -- what a data set provides
    @abc.abstractmethod
    def load(self) -> tuple[dict[str, np.ndarray], Vocabulary]:
        """The encoded ``train`` / ``valid`` / ``test`` streams and the vocabulary."""

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

    def symbol_ids(self, symbols: str | list[str]) -> list[int]:
        """Ids of those of ``symbols`` that are in the vocabulary."""
        self.setup()
        assert self.vocab is not None
        index = {s: i for i, s in enumerate(self.vocab.symbols)}
        return [index[s] for s in symbols if s in index]

    def vocabulary(self) -> list[str]:
        self.setup()
        assert self.vocab is not None
        return list(self.vocab.symbols)

    @property
    def vocab_size(self) -> int:
        self.setup()
        assert self.vocab is not None
        return len(self.vocab)

    # -- the batching
    def train_batches(self) -> int:
        return len(self.segments("train"))

    def check_batching(self) -> None:
        """DataError when a split holds fewer than 2 symbols per row of its batch."""
        self.setup()
        for split, name in zip(SPLITS, ("train", "validation", "test"), strict=True):
            rows, symbols = self.batch_size_of(split), len(self.tokens[split])
            if symbols // rows < 2:
                raise DataError(
                    f"the {name} split holds {symbols:,} symbols, too few for {rows} rows of at "
                    "least 2 symbols; lower data.batch_size"
                    + (" (or data.eval_batch_size)" if split != "train" else "")
                )

    def segments(self, split: str, *, all_rows: bool = False) -> StreamSegments:
        """This rank's segments of a split (every row with ``all_rows``)."""
        self.setup()
        rank, world = (0, 1) if all_rows else self._rank()
        rows = self.batch_size_of(split)
        return StreamSegments(self.tokens[split], rows, self.config.bptt, rank, world)

    # -- Lightning
    def setup(self, stage: str | None = None) -> None:
        if not self.tokens:
            self.tokens, self.vocab = self.load()

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


__all__ = [
    "AT_DELIMITER",
    "SPLITS",
    "CharStreamDataModule",
    "DataError",
    "ResumableLoader",
    "StreamSegments",
    "Vocabulary",
    "mark_boundaries",
]
