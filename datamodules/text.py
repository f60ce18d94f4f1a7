"""The real character data sets: Penn Treebank (Mikolov's character version), text8 and enwik8.

Where the files come from:

* ``data.local_dir`` set (the DataConfig field ``local_dir``): the data set's files are taken from
  that folder and nothing is downloaded. PTB wants ``ptb.char.{train,valid,test}.txt`` there (or
  ``simple-examples.tgz``); text8 wants ``text8``, ``text8.zip`` or ``text8_prefix.txt`` and enwik8
  wants ``enwik8``, ``enwik8.zip`` or ``enwik8_small``; for text8 and enwik8 ``local_dir`` may
  also be the path of the file itself.
* otherwise the official archive is downloaded into ``<data.root>/<name>/`` (``ptb``, ``text8``
  or ``enwik8``) by :func:`datamodules.download.fetch` and verified by its sha256 (PTB: the three
  files extracted from the archive are verified, the archive has no published digest).

The encoded streams are cached (:class:`datamodules.cache.DataCache`) in
``<data.root>/<name>/cache/``: ``train.npy``, ``valid.npy``, ``test.npy`` (uint8 ids),
``vocab.json`` (the symbols in id order) and ``manifest.json`` (format version, the parameters of
the encoding, each source file's path, size, mtime and sha256, each cache file's size and sha256,
the split lengths and vocabulary size). A source whose size changed, or whose mtime changed and
whose content differs, and a cache file whose digest differs from the manifest cause a rebuild.
Every cache file is written under a temporary name and renamed; the manifest is written last.

``prepare_data`` (Lightning runs it on rank 0 only) downloads, extracts and encodes; ``load``
reads the cache (and builds it first when needed, so it also works standalone). Expected digests
and URLs are class attributes, so a subclass (e.g. in tests) can point them elsewhere.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import tarfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from datamodules.base import SPLITS, DataError
from datamodules.cache import DataCache, DataFolders, npy_array, npy_bytes
from datamodules.download import fetch, sha256_of
from datamodules.stream import CharStreamDataModule, Vocabulary
from hmrnn.config import DataConfig
from hmrnn.io import atomic_write

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
Streams = tuple[dict[str, np.ndarray], Vocabulary]
"""What a text data set loads: the train / valid / test id streams and the vocabulary."""


class TextDataModule(CharStreamDataModule):
    """Base of the file-backed data sets: source files, the encoded cache, and loading.

    Subclasses set :attr:`NAME` and implement :meth:`source_paths`, :meth:`fetch_sources` and
    :meth:`encode`. ``folders`` says where the files live, ``cache`` keeps the encoded streams.
    """

    NAME: ClassVar[str] = ""

    def __init__(self, config: DataConfig, *, progress: bool = True) -> None:
        super().__init__(config)
        self.progress = progress
        self.folders = DataFolders.of(self.NAME, config)
        self.cache: DataCache[Streams] = DataCache(self.folders, self)

    # -- what a subclass provides
    @abc.abstractmethod
    def source_paths(self) -> list[Path] | None:
        """The files the cache is built from, without downloading (None when not all there)."""

    @abc.abstractmethod
    def fetch_sources(self) -> list[Path]:
        """Make the source files available (download, extract, verify) and return them."""

    @abc.abstractmethod
    def encode(self, sources: list[Path]) -> Streams:
        """Read and check the source files; the uint8 streams of the three splits and the vocab."""

    def params(self) -> dict[str, Any]:
        """Settings of the encoding that the cache depends on (stored in the manifest)."""
        return {}

    # -- the cache
    def prepare_data(self) -> None:
        """Download and encode once (Lightning calls this on one process per node)."""
        self.cache.prepare()

    def load(self) -> Streams:
        return self.cache.load()

    def build(self) -> Streams:
        """Fetch the sources, encode them and (re)write the cache."""
        sources = self.fetch_sources()
        log.info("encoding %s into %s", ", ".join(str(p) for p in sources), self.folders.cache_dir)
        tokens, vocab = self.encode(sources)
        if len(vocab) > 256:
            raise DataError(f"{sources[0]} holds {len(vocab)} symbols; at most 256 are supported")
        tokens = {s: tokens[s].astype(np.uint8, copy=False) for s in SPLITS}
        blobs = {"vocab.json": vocab.to_json().encode()}
        blobs |= {f"{s}.npy": npy_bytes(tokens[s]) for s in SPLITS}
        extra = {"lengths": {s: len(tokens[s]) for s in SPLITS}, "vocab_size": len(vocab)}
        self.cache.write(sources, blobs, extra)
        return tokens, vocab

    def decode(self, blobs: dict[str, bytes], manifest: dict[str, Any]) -> Streams:
        vocab = Vocabulary.from_json(blobs["vocab.json"].decode())
        return {s: npy_array(blobs[f"{s}.npy"]) for s in SPLITS}, vocab

    def _local_file(self, names: tuple[str, ...]) -> Path:
        """``local_dir`` itself when it is a file, else the first of ``names`` in it."""
        folder = self.folders.local_dir
        assert folder is not None
        if folder.is_file():
            return folder
        for name in names:
            if (folder / name).is_file():
                return folder / name
        raise DataError(
            f"data.local_dir={str(folder)!r} holds none of {', '.join(names)}; put the "
            f"{self.NAME} file there, or set data.local_dir to the file's path, or leave it empty "
            "to download the data set"
        )


# ---------------------------------------------------------------------------------------------
# Penn Treebank, characters


class PTBCharDataModule(TextDataModule):
    """Mikolov's character-level Penn Treebank: ``ptb.char.{train,valid,test}.txt``.

    Tokenisation: each line gives ``line.split()`` (one symbol per space-separated character,
    ``_`` being the word delimiter and ``<unk>`` five symbols) followed by the end-of-line symbol,
    which is stored as ``"\\n"`` (:attr:`EOL`). On the official files the splits hold 5,017,483 /
    393,043 / 442,424 symbols; the vocabulary (the sorted symbols of all three splits) holds 50.

    True boundaries: ``word``: t holds the last character of a word (the next symbol is ``_`` or
    the end of line); ``line``: t holds the end-of-line symbol (the last symbol of a line).
    """

    NAME = "ptb"
    URL: ClassVar[str] = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
    ARCHIVE: ClassVar[str] = "simple-examples.tgz"
    ARCHIVE_SHA256: ClassVar[str | None] = None  # not published; the members are verified
    MEMBER: ClassVar[str] = "simple-examples/data/ptb.char.{split}.txt"
    FILE: ClassVar[str] = "ptb.char.{split}.txt"
    SHA256: ClassVar[dict[str, str]] = {
        "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
        "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
        "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
    }
    EOL: ClassVar[str] = "\n"
    WORD: ClassVar[str] = "_"

    def params(self) -> dict[str, Any]:
        return {"eol": self.EOL}

    def _local_files(self) -> list[Path] | None:
        folder = self.folders.local_dir
        if folder is None:
            return None
        files = [folder / self.FILE.format(split=s) for s in SPLITS]
        return files if all(f.is_file() for f in files) else None

    def _extracted(self) -> list[Path]:
        return [self.folders.data_dir / self.FILE.format(split=s) for s in SPLITS]

    def source_paths(self) -> list[Path] | None:
        files = self._local_files() or self._extracted()
        return files if all(f.is_file() for f in files) else None

    def fetch_sources(self) -> list[Path]:
        local = self._local_files()
        if local is not None:
            return local
        targets = self._extracted()
        expected = [self.SHA256[s] for s in SPLITS]
        if all(f.is_file() and sha256_of(f) == e for f, e in zip(targets, expected, strict=True)):
            return targets
        if self.folders.local_dir is not None:
            archive = self.folders.local_dir / self.ARCHIVE
            if not archive.is_file():
                names = ", ".join(self.FILE.format(split=s) for s in SPLITS)
                raise DataError(
                    f"data.local_dir={str(self.folders.local_dir)!r} holds neither {names} nor "
                    f"{self.ARCHIVE}; put Mikolov's files there, or leave data.local_dir empty to "
                    f"download them from {self.URL}"
                )
            self._extract(archive, owned=False)
        else:
            archive = fetch(
                self.URL,
                self.folders.data_dir / self.ARCHIVE,
                self.ARCHIVE_SHA256,
                progress=self.progress,
            )
            self._extract(archive, owned=True)
        return targets

    def _extract(self, archive: Path, owned: bool) -> None:
        """Extract and verify the three files; a broken archive that we downloaded is deleted."""
        advice = (
            "it was deleted: run again to download it again"
            if owned
            else f"replace it with a good copy of {self.URL}"
        )
        try:
            with tarfile.open(archive, "r:*") as tar:
                for split in SPLITS:
                    name = self.MEMBER.format(split=split)
                    try:
                        member = tar.getmember(name)
                    except KeyError:
                        if owned:
                            archive.unlink(missing_ok=True)
                        raise DataError(
                            f"{archive} holds no {name}, so it is not Mikolov's "
                            f"simple-examples.tgz; {advice}"
                        ) from None
                    stream = tar.extractfile(member) if member.isfile() else None
                    if stream is None:
                        raise DataError(f"{name} in {archive} is not a regular file; {advice}")
                    data = stream.read()
                    digest = hashlib.sha256(data).hexdigest()
                    if digest != self.SHA256[split]:
                        if owned:
                            archive.unlink(missing_ok=True)
                        raise DataError(
                            f"{name} in {archive} has sha256 {digest} but {self.SHA256[split]} "
                            f"was expected; {advice}"
                        )
                    self.folders.data_dir.mkdir(parents=True, exist_ok=True)
                    atomic_write(self.folders.data_dir / self.FILE.format(split=split), data)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
            if owned:
                archive.unlink(missing_ok=True)
            raise DataError(
                f"{archive} is not a readable tar.gz archive ({error}); {advice}"
            ) from error

    def _symbols(self, path: Path) -> np.ndarray:
        """Code points of the split's symbols (end of line as ``ord(EOL)``)."""
        raw = path.read_bytes()
        if not raw.strip():
            raise DataError(f"{path} is empty; put the real ptb.char file there")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path} is not UTF-8 text (byte {error.start}); is it the right file?"
            ) from error
        if not text.endswith("\n"):
            text += "\n"
        cp = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        newline = cp == 10
        blank = np.isin(cp, np.array([32, 9, 11, 12, 13], dtype=cp.dtype))
        solid = ~blank & ~newline
        glued = np.flatnonzero(solid[1:] & solid[:-1])
        if len(glued):
            t = int(glued[0])
            line = int(np.count_nonzero(newline[:t])) + 1
            start = int(np.flatnonzero(newline[:t])[-1]) + 1 if line > 1 else 0
            excerpt = text[start : start + 40].rstrip("\n")
            raise DataError(
                f"{path} line {line} ({excerpt!r}...) is not characters separated by spaces; "
                "use Mikolov's ptb.char.*.txt files (not the word-level ptb.*.txt)"
            )
        symbols = cp[~blank]
        eol = ord(self.EOL)
        if eol != 10:
            if np.any(symbols == eol):
                raise DataError(f"{path} holds the end-of-line stand-in {self.EOL!r} itself")
            symbols = np.where(symbols == 10, eol, symbols)
        return symbols

    def encode(self, sources: list[Path]) -> Streams:
        symbols = {s: self._symbols(p) for s, p in zip(SPLITS, sources, strict=True)}
        alphabet = np.unique(np.concatenate(list(symbols.values())))
        vocab = Vocabulary(tuple(chr(int(c)) for c in alphabet))
        if len(vocab) > 256:
            raise DataError(f"{sources[0]} and its splits hold {len(vocab)} distinct symbols")
        ids = {s: np.searchsorted(alphabet, v).astype(np.uint8) for s, v in symbols.items()}
        return ids, vocab

    def delimiter_ids(self) -> list[int]:
        return self.symbol_ids([self.EOL, self.WORD])

    def truth_rules(self) -> dict[str, tuple[list[int], list[int]]]:
        return {"word": (self.delimiter_ids(), []), "line": ([], self.symbol_ids([self.EOL]))}


# ---------------------------------------------------------------------------------------------
# text8 and enwik8: one 100M file, split 90M / 5M / 5M


class _SplitFileDataModule(TextDataModule):
    """One file (raw, or the one member of a zip archive) cut into 90% / 5% / 5%."""

    URL: ClassVar[str] = ""
    ZIP_SHA256: ClassVar[str | None] = None
    MEMBER: ClassVar[str] = ""
    LOCAL_NAMES: ClassVar[tuple[str, ...]] = ()
    STANDARD_SIZE: ClassVar[int] = 100_000_000

    @property
    def archive_path(self) -> Path:
        return self.folders.data_dir / f"{self.MEMBER}.zip"

    def source_paths(self) -> list[Path] | None:
        if self.folders.local_dir is not None:
            try:
                return [self._local_file(self.LOCAL_NAMES)]
            except DataError:
                return None
        return [self.archive_path] if self.archive_path.is_file() else None

    def fetch_sources(self) -> list[Path]:
        if self.folders.local_dir is not None:
            return [self._local_file(self.LOCAL_NAMES)]
        return [fetch(self.URL, self.archive_path, self.ZIP_SHA256, progress=self.progress)]

    def read_source(self, path: Path) -> bytes:
        """The bytes of the file, or of the data member of a zip archive."""
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
        if not is_zip:
            return path.read_bytes()
        owned = self.folders.local_dir is None
        advice = (
            "delete it and run again to download it again"
            if owned
            else f"replace it with a good copy of {self.URL}"
        )
        try:
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
                name = self.MEMBER if self.MEMBER in names else None
                if name is None and len(names) == 1:
                    name = names[0]
                if name is None:
                    raise DataError(f"{path} holds no member {self.MEMBER!r}; {advice}")
                return archive.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
            raise DataError(f"{path} is not a readable zip archive ({error}); {advice}") from error

    def split(self, path: Path, data: np.ndarray) -> dict[str, np.ndarray]:
        n = len(data)
        train, valid = n * 90 // 100, n * 5 // 100
        if n != self.STANDARD_SIZE:
            self.cache.notes.append(
                f"{path.name} holds {n:,} symbols, not the standard {self.STANDARD_SIZE:,}: "
                f"split 90%/5%/5% into {train:,} / {valid:,} / {n - train - valid:,} "
                "(results are not comparable with published ones)"
            )
        return {
            "train": data[:train],
            "valid": data[train : train + valid],
            "test": data[train + valid :],
        }

    def _bytes(self, path: Path) -> np.ndarray:
        data = np.frombuffer(self.read_source(path), dtype=np.uint8)
        if len(data) < 20:
            raise DataError(f"{path} holds {len(data)} bytes, too few to split; is it the file?")
        return data


class Text8DataModule(_SplitFileDataModule):
    """text8: 100M characters of Wikipedia, only ``a-z`` and space (27 symbols, space first).

    Standard split: the first 90M characters train, the next 5M valid, the last 5M test; a file
    of another length (e.g. an excerpt) is split 90% / 5% / 5% with a logged warning.
    True boundaries: ``word``: t holds the last letter of a word (the next symbol is a space).
    """

    NAME = "text8"
    URL = "http://mattmahoney.net/dc/text8.zip"
    ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
    MEMBER = "text8"
    LOCAL_NAMES = ("text8", "text8.zip", "text8_prefix.txt")
    ALPHABET: ClassVar[str] = " abcdefghijklmnopqrstuvwxyz"

    def encode(self, sources: list[Path]) -> Streams:
        (path,) = sources
        data = self._bytes(path)
        table = np.full(256, 255, dtype=np.uint8)
        table[np.frombuffer(self.ALPHABET.encode("ascii"), dtype=np.uint8)] = np.arange(
            len(self.ALPHABET), dtype=np.uint8
        )
        ids = table[data]
        bad = np.flatnonzero(ids == 255)
        if len(bad):
            at = int(bad[0])
            raise DataError(
                f"{path} holds byte {bytes(data[at : at + 1])!r} at offset {at:,} ({len(bad):,} "
                "such bytes); text8 holds only a-z and space: use the text8 file from "
                f"{self.URL}"
            )
        return self.split(path, ids), Vocabulary(tuple(self.ALPHABET))

    def delimiter_ids(self) -> list[int]:
        return self.symbol_ids(" ")


class Enwik8DataModule(_SplitFileDataModule):
    """enwik8: the first 100M bytes of a Wikipedia XML dump, read as bytes.

    Split 90M / 5M / 5M bytes (90% / 5% / 5% for another length, with a logged warning). The
    vocabulary holds the byte values present in the file, in order, each as the one-character
    string ``chr(byte)`` (latin-1), so :meth:`to_bytes` turns ids back into the exact bytes.
    True boundaries: ``word``: t is not whitespace and t+1 is a space, newline or tab. In XML and
    wiki markup these "words" include tags and punctuation, so they are only approximate
    boundaries, given for a rough comparison with the detectors.
    """

    NAME = "enwik8"
    URL = "http://mattmahoney.net/dc/enwik8.zip"
    ZIP_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
    MEMBER = "enwik8"
    LOCAL_NAMES = ("enwik8", "enwik8.zip", "enwik8_small")
    WHITESPACE: ClassVar[bytes] = b" \n\t\r"

    def encode(self, sources: list[Path]) -> Streams:
        (path,) = sources
        data = self._bytes(path)
        present = np.flatnonzero(np.bincount(data, minlength=256))
        table = np.zeros(256, dtype=np.uint8)
        table[present] = np.arange(len(present), dtype=np.uint8)
        vocab = Vocabulary(tuple(chr(int(b)) for b in present))
        return self.split(path, table[data]), vocab

    def to_bytes(self, ids: Any) -> bytes:
        """The bytes that ids stand for."""
        self.setup()
        assert self.vocab is not None
        return self.vocab.decode(ids).encode("latin-1")

    def delimiter_ids(self) -> list[int]:
        return self.symbol_ids([chr(b) for b in self.WHITESPACE])


__all__ = ["Enwik8DataModule", "PTBCharDataModule", "Text8DataModule", "TextDataModule"]
