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

Cache (``<data.root>/iam_ondb/cache/``): per split ``{split}.npy`` (float32 ``(P, 3)``, every
sequence's normalised points concatenated) and ``{split}_offsets.npy`` (int64 ``(n + 1,)``:
sequence i is rows ``offsets[i]:offsets[i + 1]``), then ``manifest.json`` (format, split
parameters, the source and split-list records, each cache file's size and sha256, the line names
of each split in order, the normalisation statistics, counts and notes). Every file is written
atomically and the manifest last; a changed source or a cache file whose digest differs causes a
rebuild.

Batches: whole sequences, padded to the longest in the batch. :func:`collate_sequences` returns
time-major ``(inputs (T, B, 3), targets (T, B, 3), mask (T, B) bool, lengths (B,))`` with inputs =
points[:-1], targets = points[1:], so every real target point is counted once and padding never.
Training batches are bucketed by length and reshuffled every epoch by a seeded generator; see
:class:`LengthBatchSampler` for how DDP ranks share them (``Trainer(use_distributed_sampler=
False)`` is required, as for the character data sets).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import lzma
import math
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from xml.parsers import expat

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.download import fetch, sha256_of
from datamodules.stream import SPLITS, DataError, DataFolders, ResumableLoader
from hmrnn.config import DataConfig
from hmrnn.io import atomic_write

log = logging.getLogger(__name__)

SPLIT_SEED = 2017
"""Default seed of the random 90/5/5 split (``numpy.random.default_rng(SPLIT_SEED)``)."""
MIN_POINTS = 300
OFFICIAL_LISTS = ("trainset", "testset_v", "testset_t", "testset_f")
ARCHIVES = ("lineStrokes-all.tar.gz", "lineStrokes-all.tar.xz", "lineStrokes-all.tgz")
BASE_URL = "http://www.fki.inf.unibe.ch/DBs/iamOnDB"
LINESTROKES_URL = f"{BASE_URL}/data/lineStrokes-all.tar.gz"
USER_ENV, PASSWORD_ENV = "IAM_ONDB_USER", "IAM_ONDB_PASSWORD"
BUCKET_BATCHES = 50
"""Training batches are formed inside shuffled chunks of this many batches, sorted by length."""


class IAMFormatError(DataError):
    """A line-stroke file that is not the IAM-OnDB XML format; the message names the file."""


# ---------------------------------------------------------------------------------------------
# one line file


class _Reject(Exception):
    """Raised inside the expat handlers: the reason a file is not a line-stroke file."""


def parse_line_bytes(data: bytes, name: str) -> np.ndarray:
    """The ``(N, 3)`` float32 ``(dx, dy, pen_up)`` array of a line-stroke XML document.

    ``name`` is used in the error message. The document is read by expat (the parser under
    :mod:`xml.etree.ElementTree`) with element handlers only, which is several times faster than
    building the tree; DOCTYPE and entity declarations are refused, so nothing can expand.
    Raises :class:`IAMFormatError` (one sentence naming ``name``) for anything malformed.
    """
    xs: list[str] = []
    ys: list[str] = []
    ends: list[int] = []  # index of the last point of each non-empty stroke
    depth = 0
    sets = 0
    in_stroke = False  # inside WhiteboardCaptureSession > StrokeSet > Stroke
    stroke_start = 0
    parent = ""  # the element at depth 2

    def start(tag: str, attrs: list[str]) -> None:
        nonlocal depth, sets, in_stroke, stroke_start, parent
        depth += 1
        if depth == 4:
            if in_stroke and tag == "Point":
                if len(attrs) >= 4 and attrs[0] == "x" and attrs[2] == "y":
                    xs.append(attrs[1])
                    ys.append(attrs[3])
                    return
                values = dict(zip(attrs[::2], attrs[1::2], strict=False))
                if "x" not in values or "y" not in values:
                    raise _Reject(f"point {len(xs) + 1} has no x or no y attribute")
                xs.append(values["x"])
                ys.append(values["y"])
        elif depth == 3:
            in_stroke = tag == "Stroke" and parent == "StrokeSet"
            stroke_start = len(xs)
        elif depth == 2:
            parent = tag
            if tag == "StrokeSet":
                sets += 1
                if sets > 1:
                    raise _Reject("it holds more than one StrokeSet")
        elif depth == 1 and tag != "WhiteboardCaptureSession":
            raise _Reject(f"its root element is <{tag}>, not <WhiteboardCaptureSession>")

    def end(tag: str) -> None:
        nonlocal depth, in_stroke
        depth -= 1
        if depth == 2 and in_stroke:
            in_stroke = False
            if len(xs) > stroke_start:
                ends.append(len(xs) - 1)

    def refuse_doctype(*_: Any) -> None:
        raise _Reject("it has a DOCTYPE declaration, which line-stroke files never have")

    parser = expat.ParserCreate()
    parser.ordered_attributes = True
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse_doctype
    parser.EntityDeclHandler = refuse_doctype
    try:
        parser.Parse(data, True)
    except _Reject as error:
        raise IAMFormatError(f"{name} is not an IAM-OnDB line-stroke file: {error}") from None
    except expat.ExpatError as error:
        raise IAMFormatError(f"{name} is not well-formed XML ({error})") from None
    except Exception as error:  # e.g. an unknown encoding: any parser failure is a format error
        raise IAMFormatError(f"{name} could not be parsed as XML ({error!r})") from None
    if sets == 0:
        raise IAMFormatError(f"{name} has no StrokeSet element, so it holds no pen strokes")
    if not xs:
        raise IAMFormatError(f"{name} has an empty StrokeSet (no Point in any Stroke)")
    try:
        coords = np.empty((len(xs), 2), dtype=np.float64)
        coords[:, 0] = np.array(xs, dtype=np.float64)
        coords[:, 1] = np.array(ys, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        pairs = enumerate(zip(xs, ys, strict=True))
        bad = next((i for i, (x, y) in pairs if not _numeric(x, y)), 0)
        raise IAMFormatError(
            f"{name} has a point ({bad + 1}) whose x={xs[bad]!r} or y={ys[bad]!r} is not a number"
        ) from None
    out = np.zeros((len(xs), 3), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        out[1:, :2] = np.diff(coords, axis=0)
    out[ends, 2] = 1.0
    if not np.isfinite(coords).all() or not np.isfinite(out).all():
        raise IAMFormatError(f"{name} has a point whose coordinates are not finite numbers")
    return out


def _numeric(x: str, y: str) -> bool:
    """Whether numpy reads both strings as numbers (the same conversion as the parser's)."""
    try:
        np.array([x, y], dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def parse_line_strokes(path: str | Path) -> np.ndarray:
    """The ``(N, 3)`` float32 ``(dx, dy, pen_up)`` array of one line-stroke XML file.

    dx, dy: offset from the previous point (0, 0 for the first); pen_up: 1 on the last point of
    each stroke, else 0. Raises :class:`IAMFormatError` naming the file when it cannot be read or
    is not a line-stroke file (not XML, no StrokeSet, a Point without numeric x and y, no points).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise IAMFormatError(f"{path} cannot be read ({error.strerror or error})") from None
    return parse_line_bytes(data, str(path))


# ---------------------------------------------------------------------------------------------
# the whole archive


def _line_name(member: str) -> str | None:
    """``a01-000u-01`` for ``.../a01-000u-01.xml``; None for anything that is not a line file."""
    base = member.rsplit("/", 1)[-1]
    if not base.endswith(".xml") or base.startswith("._"):
        return None
    return base[:-4]


def form_of(line: str) -> str:
    """The form id of a line name: ``a01-020x-03`` -> ``a01-020x``."""
    return line.rsplit("-", 1)[0]


def _add(out: dict[str, np.ndarray], name: str | None, where: str, points: np.ndarray) -> None:
    if name in out:
        raise DataError(f"{where} holds a second line file named {name}.xml; remove the duplicate")
    out[name] = points  # type: ignore[index]


def read_archive(path: str | Path) -> dict[str, np.ndarray]:
    """Every line file of a ``lineStrokes`` tar archive (gz, xz, bz2 or plain), by line name.

    Members are streamed one by one, nothing is extracted. Raises :class:`DataError` for an
    unreadable archive and :class:`IAMFormatError` (naming the member) for a malformed file.
    """
    path = Path(path)
    out: dict[str, np.ndarray] = {}
    try:
        with tarfile.open(path, "r|*") as tar:
            for member in tar:
                name = _line_name(member.name) if member.isfile() else None
                if name is None:
                    continue
                handle = tar.extractfile(member)
                assert handle is not None
                where = f"{path}:{member.name}"
                _add(out, name, str(path), parse_line_bytes(handle.read(), where))
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
        raise DataError(
            f"{path} is not a readable tar archive ({error}); replace it with a good copy of "
            f"{LINESTROKES_URL}"
        ) from error
    if not out:
        raise DataError(f"{path} holds no line-stroke .xml files; is it lineStrokes-all.tar.gz?")
    return out


def _tree_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.xml") if p.is_file() and _line_name(p.name))


def read_tree(folder: str | Path) -> dict[str, np.ndarray]:
    """Every ``*.xml`` line file under an extracted ``lineStrokes`` folder, by line name."""
    folder = Path(folder)
    out: dict[str, np.ndarray] = {}
    for file in _tree_files(folder):
        _add(out, _line_name(file.name), str(folder), parse_line_strokes(file))
    if not out:
        raise DataError(f"{folder} holds no line-stroke .xml files; is it the lineStrokes folder?")
    return out


# ---------------------------------------------------------------------------------------------
# splits and normalisation


def read_form_list(path: str | Path) -> list[str]:
    """Form ids of an official split file (one per line, after optional white space)."""
    text = Path(path).read_text(encoding="latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def build_splits(
    sequences: Mapping[str, np.ndarray],
    *,
    min_points: int = MIN_POINTS,
    seed: int = SPLIT_SEED,
    mode: str = "random",
    official_lists: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[str]]:
    """Line names of ``train`` / ``valid`` / ``test``; only lines with >= ``min_points`` points.

    ``random``: the qualifying names, sorted, permuted by ``np.random.default_rng(seed)``; train
    = first ``n * 90 // 100``, valid = next ``n * 5 // 100``, test = the rest (for n = 11,628:
    10,465 / 581 / 582). Each split's names are returned in permuted order.
    ``official``: ``official_lists`` maps ``trainset``, ``testset_v``, ``testset_t``,
    ``testset_f`` to form ids; train = lines of trainset + testset_t + testset_f, valid = lines of
    testset_v, test = valid (the protocol has no held-out test set). Names are sorted.
    """
    keep = sorted(name for name, points in sequences.items() if len(points) >= min_points)
    if mode == "random":
        n = len(keep)
        order = np.random.default_rng(seed).permutation(n)
        names = [keep[i] for i in order]
        n_train, n_valid = n * 90 // 100, n * 5 // 100
        return {
            "train": names[:n_train],
            "valid": names[n_train : n_train + n_valid],
            "test": names[n_train + n_valid :],
        }
    if mode == "official":
        if official_lists is None or any(k not in official_lists for k in OFFICIAL_LISTS):
            raise DataError(
                f"the official split needs the form lists {', '.join(OFFICIAL_LISTS)} "
                f"(from {BASE_URL}/<name>.txt)"
            )
        forms = {k: set(official_lists[k]) for k in OFFICIAL_LISTS}
        train_forms = forms["trainset"] | forms["testset_t"] | forms["testset_f"]
        valid = [n for n in keep if form_of(n) in forms["testset_v"]]
        return {
            "train": [n for n in keep if form_of(n) in train_forms],
            "valid": valid,
            "test": list(valid),
        }
    raise DataError(f"data.iam_split={mode!r} is unknown; choose 'random' or 'official'")


def normalisation(points: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (ddof 0) of dx and dy over all points: two (2,) float64."""
    total, square, count = np.zeros(2), np.zeros(2), 0
    for p in points:
        xy = p[:, :2].astype(np.float64)
        total += xy.sum(0)
        count += len(xy)
    if count == 0:
        raise DataError("the training split holds no points; cannot normalise")
    mean = total / count
    for p in points:
        square += ((p[:, :2].astype(np.float64) - mean) ** 2).sum(0)
    std = np.sqrt(square / count)
    std[std == 0] = 1.0
    return mean, std


@dataclass
class SequenceSet:
    """Sequences stored end to end: sequence i is ``points[offsets[i]:offsets[i + 1]]``."""

    points: np.ndarray  # (P, 3) float32
    offsets: np.ndarray  # (n + 1,) int64
    names: list[str]

    @classmethod
    def from_list(cls, names: list[str], seqs: list[np.ndarray]) -> SequenceSet:
        lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        points = np.concatenate(seqs) if seqs else np.zeros((0, 3), np.float32)
        return cls(points.astype(np.float32, copy=False), offsets, list(names))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self.points[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> np.ndarray:
        """Points per sequence, (n,) int64."""
        return np.diff(self.offsets)


# ---------------------------------------------------------------------------------------------
# batching


class HandwritingSequences(Dataset):
    """Item i: sequence i as a float32 tensor (L_i, 3)."""

    def __init__(self, sequences: SequenceSet) -> None:
        self.sequences = sequences

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.sequences[i])  # a view of the store: collate copies it


def collate_sequences(
    items: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad a list of (L_i, 3) sequences (L_i >= 2) into one time-major batch.

    Returns ``inputs`` (T, B, 3) = points[:-1], ``targets`` (T, B, 3) = points[1:], ``mask`` (T, B)
    bool, True on the L_i - 1 real steps, and ``lengths`` (B,) int64 = L_i - 1, with
    T = max(lengths). Padding is zeros and mask False.
    """
    if not items:
        raise ValueError("collate_sequences needs at least one sequence")
    arrays = [np.asarray(x, dtype=np.float32) for x in items]
    lengths = np.array([len(x) - 1 for x in arrays], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("every sequence needs at least 2 points (an input and a target)")
    T, B = int(lengths.max()), len(arrays)
    inputs = np.zeros((T, B, 3), dtype=np.float32)  # filled in numpy: much faster than torch
    targets = np.zeros((T, B, 3), dtype=np.float32)  # indexing for these small copies
    for b, x in enumerate(arrays):
        inputs[: len(x) - 1, b] = x[:-1]
        targets[: len(x) - 1, b] = x[1:]
    mask = np.arange(T)[:, None] < lengths[None, :]
    return (
        torch.from_numpy(inputs),
        torch.from_numpy(targets),
        torch.from_numpy(mask),
        torch.from_numpy(lengths),
    )


class LengthBatchSampler(Sampler[list[int]]):
    """Batches of sequence indices, similar lengths together, shared out over DDP ranks.

    ``batch_size`` is global (all ranks together), like ``data.batch_size``.

    Training (``shuffle=True``): per epoch a generator seeded with ``(seed, epoch)`` permutes the
    sequences; each chunk of ``BUCKET_BATCHES`` batches is sorted by length and cut into global
    batches, and the batch order is permuted. Every rank computes the same global batches and
    takes every ``world_size``-th sequence of each (rank r: positions r, r + W, ...), so all ranks
    run the same number of steps; a last global batch with fewer than ``world_size`` sequences
    is dropped (at most W - 1 sequences an epoch, different ones each epoch). Lightning calls
    :meth:`set_epoch`; used alone, each iteration moves on to the next epoch's order.

    Evaluation (``shuffle=False``): sequences sorted by length (ties by index); rank r takes
    sequences r, r + W, ... of that order and batches them by ``ceil(batch_size / W)``. Every
    sequence is evaluated exactly once on one rank; ranks may differ by one batch, so metrics
    must be summed per rank and reduced at epoch end (e.g. a torchmetrics sum), not synced per
    step.
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"the batch size must be positive, got {batch_size}")
        if shuffle and batch_size % world_size:
            raise DataError(
                f"data.batch_size={batch_size} must be divisible by the number of processes "
                f"({world_size}) so that every rank holds the same number of sequences"
            )
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # batches of the next training epoch to skip once (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The training epoch's global batches (before the split over ranks)."""
        n, size = len(self.lengths), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n)
        batches = []
        chunk = size * BUCKET_BATCHES
        for start in range(0, n, chunk):
            idx = order[start : start + chunk]
            idx = idx[np.argsort(self.lengths[idx], kind="stable")]
            batches += [idx[i : i + size] for i in range(0, len(idx), size)]
        batches = [b for b in batches if len(b) >= self.world_size]
        return [batches[i] for i in rng.permutation(len(batches))]

    def _eval_batches(self) -> list[list[int]]:
        order = np.argsort(self.lengths, kind="stable")[self.rank :: self.world_size]
        local = math.ceil(self.batch_size / self.world_size)
        return [order[i : i + local].tolist() for i in range(0, len(order), local)]

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            return iter(self._eval_batches())
        epoch, self.epoch = self.epoch, self.epoch + 1
        start, self.start = self.start, 0
        batches = self.global_batches(epoch)[start:]
        return iter([b[self.rank :: self.world_size].tolist() for b in batches])

    def __len__(self) -> int:
        if not self.shuffle:
            n = len(range(self.rank, len(self.lengths), self.world_size))
            return math.ceil(n / math.ceil(self.batch_size / self.world_size))
        n, size = len(self.lengths), self.batch_size
        full, rest = divmod(n, size)
        return full + (1 if rest >= self.world_size else 0)


# ---------------------------------------------------------------------------------------------
# the DataModule


def _source_record(path: Path) -> dict[str, Any]:
    """Size, mtime and digest of a file; count, total size and latest mtime of a folder."""
    if path.is_dir():
        files = _tree_files(path)
        stats = [f.stat() for f in files]
        return {
            "path": str(path.resolve()),
            "files": len(files),
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = path.stat()
    return {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256_of(path),
    }


def _same_source(record: dict[str, Any], path: Path) -> bool:
    if record.get("path") != str(path.resolve()) or not path.exists():
        return False
    if path.is_dir():
        return _source_record(path) == record
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return False
    return stat.st_mtime_ns == record.get("mtime_ns") or sha256_of(path) == record.get("sha256")


class IAMOnDBDataModule(DataFolders, L.LightningDataModule):
    """IAM-OnDB line trajectories as ``(dx, dy, pen_up)`` sequences (see the module docstring).

    Reads from ``config``: ``root``, ``batch_size``, ``eval_batch_size`` and, with ``getattr``
    and a default, ``local_dir`` (""), ``iam_split`` ("random"), ``iam_seed`` (2017),
    ``iam_min_points`` (300) and ``iam_splits_dir`` (""). ``seed`` of the training order is
    ``iam_seed`` too.
    """

    NAME: ClassVar[str] = "iam_ondb"
    input_size: ClassVar[int] = 3

    def __init__(self, config: DataConfig, *, progress: bool = True) -> None:
        super().__init__()
        self.config = config
        self.progress = progress
        self.sequences: dict[str, SequenceSet] = {}
        self.mean = np.zeros(2)
        self.std = np.ones(2)
        self.info: dict[str, Any] = {}
        self.notes: list[str] = []
        self._built: tuple[dict[str, SequenceSet], dict[str, Any]] | None = None

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
        if self.local_dir is not None:
            return self._find_in(self.local_dir)
        return self._find_in(self.data_dir) if self.data_dir.is_dir() else None

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
        source = self.source_path()
        if source is not None:
            return source
        if self.local_dir is not None:
            raise DataError(
                f"data.local_dir={str(self.local_dir)!r} holds neither a lineStrokes/ folder nor "
                f"{' / '.join(ARCHIVES[:2])}; put the extracted tree or the archive from "
                f"{LINESTROKES_URL} there, or leave data.local_dir empty to download it"
            )
        auth = self._credentials()
        if auth is None:
            raise self._missing("lineStrokes-all.tar.gz", self.data_dir, LINESTROKES_URL)
        return fetch(
            LINESTROKES_URL, self.data_dir / ARCHIVES[0], None, progress=self.progress, auth=auth
        )

    def _list_folders(self) -> list[Path]:
        folders = []
        explicit = getattr(self.config, "iam_splits_dir", "") or ""
        if explicit:
            folders.append(Path(explicit).expanduser())
        if self.local_dir is not None:
            base = self.local_dir.parent if self.local_dir.is_file() else self.local_dir
            folders += [base, base / "splits", base.parent / "splits"]
        folders += [self.data_dir, self.data_dir / "splits"]
        return folders

    def list_paths(self, download: bool = False) -> list[Path] | None:
        """The four official form lists (None when not all are found and ``download`` is off)."""
        for folder in self._list_folders():
            files = [folder / f"{name}.txt" for name in OFFICIAL_LISTS]
            if all(f.is_file() for f in files):
                return files
        if not download:
            return None
        target = self.data_dir / "splits"
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

    def _sources(self) -> list[Path] | None:
        source = self.source_path()
        if source is None:
            return None
        if self.split_mode != "official":
            return [source]
        lists = self.list_paths()
        return None if lists is None else [source, *lists]

    # -- building
    def read_source(self, source: Path) -> dict[str, np.ndarray]:
        return read_tree(source) if source.is_dir() else read_archive(source)

    def build(self) -> tuple[dict[str, SequenceSet], dict[str, Any]]:
        """Parse every line file, split, normalise and (re)write the cache."""
        self.notes = []
        source = self.fetch_source()
        lists = self.list_paths(download=True) if self.split_mode == "official" else None
        log.info("parsing the IAM-OnDB line files in %s", source)
        sequences = self.read_source(source)
        official = None
        if lists is not None:
            official = {n: read_form_list(p) for n, p in zip(OFFICIAL_LISTS, lists, strict=True)}
            self.notes.append(
                "the official split has no held-out test set: test is the validation set "
                "(testset_v)"
            )
        names = build_splits(
            sequences,
            min_points=self.min_points,
            seed=self.seed,
            mode=self.split_mode,
            official_lists=official,
        )
        for split in SPLITS:
            if not names[split]:
                raise DataError(
                    f"the {split} split of {source} is empty ({len(sequences)} line files, "
                    f"{sum(len(v) >= self.min_points for v in sequences.values())} with >= "
                    f"{self.min_points} points); use the full lineStrokes archive"
                )
        mean, std = normalisation([sequences[n] for n in names["train"]])
        scale = np.array([*(1 / std), 1.0], dtype=np.float64)
        shift = np.array([*mean, 0.0], dtype=np.float64)
        sets = {}
        for split in SPLITS:
            raw = SequenceSet.from_list(names[split], [sequences[n] for n in names[split]])
            raw.points = ((raw.points - shift) * scale).astype(np.float32)
            sets[split] = raw
        lengths = np.array([len(v) for v in sequences.values()])
        info = {
            "mean": mean.tolist(),
            "std": std.tolist(),
            "line_files": len(sequences),
            "points": int(lengths.sum()),
            "kept": int((lengths >= self.min_points).sum()),
            "kept_mean_length": float(lengths[lengths >= self.min_points].mean())
            if (lengths >= self.min_points).any()
            else 0.0,
        }
        self._write_cache([source, *(lists or [])], sets, info)
        self._built = sets, info
        return sets, info

    def _write_cache(
        self, sources: list[Path], sets: dict[str, SequenceSet], info: dict[str, Any]
    ) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path.unlink(missing_ok=True)  # no manifest while the files change
        entries = {}
        for split in SPLITS:
            for name, array in (
                (f"{split}.npy", sets[split].points),
                (f"{split}_offsets.npy", sets[split].offsets),
            ):
                buffer = io.BytesIO()
                np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
                data = buffer.getvalue()
                atomic_write(self.cache_dir / name, data)
                entries[name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {
            "format": self.CACHE_FORMAT,
            "dataset": self.NAME,
            "params": self.params(),
            "sources": [_source_record(p) for p in sources],
            "cache": entries,
            "normalisation": {"mean": info["mean"], "std": info["std"]},
            "stats": {k: v for k, v in info.items() if k not in ("mean", "std")},
            "counts": {s: len(sets[s]) for s in SPLITS},
            "names": {s: sets[s].names for s in SPLITS},
            "notes": self.notes,
        }
        atomic_write(self.manifest_path, json.dumps(manifest, indent=1).encode())

    # -- the cache
    def _manifest(self) -> dict[str, Any] | None:
        sources = self._sources()
        return self.matching_manifest(sources, _same_source)

    def cache_is_valid(self) -> bool:
        """Whether the manifest matches the sources and the cache files' sizes (no hashing)."""
        return self._manifest() is not None

    def _read_cache(self) -> tuple[dict[str, SequenceSet], dict[str, Any]] | None:
        manifest = self._manifest()
        if manifest is None:
            return None
        arrays = {}
        try:
            for name, entry in manifest["cache"].items():
                data = (self.cache_dir / name).read_bytes()
                if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
                    log.warning("cache file %s is corrupt (its sha256 differs); rebuilding", name)
                    return None
                arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
            sets = {
                s: SequenceSet(arrays[f"{s}.npy"], arrays[f"{s}_offsets.npy"], manifest["names"][s])
                for s in SPLITS
            }
            info = {**manifest["stats"], **manifest["normalisation"]}
        except (KeyError, ValueError, OSError, TypeError) as error:
            log.warning("the cache in %s is unreadable (%s); rebuilding", self.cache_dir, error)
            return None
        self.notes = list(manifest.get("notes", []))
        return sets, info

    # -- Lightning
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

    def _rank(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def batch_sampler(self, split: str) -> LengthBatchSampler:
        self.setup()
        size = self.config.batch_size
        if split != "train" and self.config.eval_batch_size:
            size = self.config.eval_batch_size
        rank, world = self._rank()
        return LengthBatchSampler(
            self.sequences[split].lengths,
            size,
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


__all__ = [
    "SPLIT_SEED",
    "HandwritingSequences",
    "IAMFormatError",
    "IAMOnDBDataModule",
    "LengthBatchSampler",
    "SequenceSet",
    "build_splits",
    "collate_sequences",
    "normalisation",
    "parse_line_bytes",
    "parse_line_strokes",
    "read_archive",
    "read_tree",
]
