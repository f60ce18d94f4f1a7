"""A file-backed data set's folders and the cache of what was parsed from its source files.

:class:`DataFolders` says where the files live: ``data.local_dir`` (take them from there, no
download) or ``<data.root>/<name>`` (downloads, extracted files), and ``<...>/cache``.

:class:`DataCache` keeps the parsed data set in ``cache/``: named blobs (``.npy`` arrays, JSON)
and ``manifest.json`` (the cache format, data set name and parameters, each source's path, size,
mtime and sha256 (a folder: its file count, total size and latest mtime), each blob's size and
sha256, what the data set adds, and the notes of the build). Every blob is written under a
temporary name and renamed, the manifest last. The cache is rebuilt when the manifest was made
by another format, data set, parameters or sources, when a source's size changed or its mtime
moved and its content differs, or when a blob is missing, of another size or digest.

The data set is the cache's :class:`CacheSource`: it names its sources and parameters, builds
(writing through :meth:`DataCache.write`) and decodes the blobs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from datamodules.base import DataError
from datamodules.download import sha256_of
from hmrnn.config import DataConfig
from hmrnn.io import atomic_write

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
FolderFiles = Callable[[Path], list[Path]]
"""The files of a source folder that count (their number, sizes and mtimes are recorded)."""


@dataclass(frozen=True)
class DataFolders:
    """Where a data set's files live.

    Attributes:
        name: the folder under ``data.root`` (``ptb``, ``iam_ondb``, ...).
        root: ``data.root`` as given (named in errors).
        local: ``data.local_dir`` as given; empty: download.
    """

    name: str
    root: str
    local: str = ""

    @classmethod
    def of(cls, name: str, config: DataConfig) -> DataFolders:
        return cls(name, str(config.root), config.local_dir or "")

    @property
    def local_dir(self) -> Path | None:
        """``data.local_dir`` (take the files from there, no download) or None."""
        return Path(self.local).expanduser() if self.local else None

    @property
    def data_dir(self) -> Path:
        """``<data.root>/<name>``: downloads and extracted files."""
        return Path(self.root).expanduser() / self.name

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / "manifest.json"

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
                f"data.root={self.root!r}: cannot write {self.data_dir} "
                f"({error.strerror or error}); set data.root to a writable folder"
            ) from error


def all_files(folder: Path) -> list[Path]:
    """Every file under ``folder``, sorted (the default :data:`FolderFiles`)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def source_record(path: Path, folder_files: FolderFiles = all_files) -> dict[str, Any]:
    """Size, mtime and digest of a file; count, total size and latest mtime of a folder."""
    if path.is_dir():
        files = folder_files(path)
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


def same_source(record: dict[str, Any], path: Path, folder_files: FolderFiles = all_files) -> bool:
    """Whether ``path`` is still the source ``record`` describes: same path and size, and the
    same mtime or (when only the mtime moved) the same digest; a folder: the same record."""
    if record.get("path") != str(path.resolve()) or not path.exists():
        return False
    if path.is_dir():
        return source_record(path, folder_files) == record
    stat = path.stat()
    if stat.st_size != record.get("size"):
        return False
    return stat.st_mtime_ns == record.get("mtime_ns") or sha256_of(path) == record.get("sha256")


def npy_bytes(array: np.ndarray) -> bytes:
    """The ``.npy`` file of an array (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_array(blob: bytes) -> np.ndarray:
    """The array of a ``.npy`` blob; ValueError when it is not one."""
    return np.load(io.BytesIO(blob), allow_pickle=False)


class CacheSource(Protocol[T_co]):
    """What a data set tells its :class:`DataCache`."""

    def source_paths(self) -> list[Path] | None:
        """The files (or folders) the cache is built from, without downloading; None when
        they are not all there."""
        ...

    def params(self) -> dict[str, Any]:
        """Settings the cache depends on (recorded in the manifest)."""
        ...

    def build(self) -> T_co:
        """Fetch and parse the sources, write the cache with :meth:`DataCache.write` (adding
        to its ``notes``) and return the data set."""
        ...

    def decode(self, blobs: dict[str, bytes], manifest: dict[str, Any]) -> T_co:
        """The data set from the cache's blobs (checked against their digests) and manifest;
        KeyError, ValueError or TypeError when they do not hold it (the cache is rebuilt)."""
        ...


class DataCache(Generic[T]):
    """The cache of one data set (see the module docstring); ``T``: what the data set loads.

    Args:
        folders: where the cache lives.
        source: the data set (sources, parameters, build, decode).
        folder_files: the files of a source folder that count.
    """

    FORMAT = 1  # bump when a cache layout changes: older caches are rebuilt

    def __init__(
        self, folders: DataFolders, source: CacheSource[T], folder_files: FolderFiles = all_files
    ) -> None:
        self.folders, self.source, self.folder_files = folders, source, folder_files
        self.notes: list[str] = []  # warnings of the build, kept in the manifest, logged on load
        self._built: T | None = None  # built by prepare() and not yet taken by load()

    def prepare(self) -> None:
        """Build the cache unless it is valid (Lightning's ``prepare_data``, one process)."""
        if not self.is_valid():
            self._built = self._build()

    def load(self) -> T:
        """The data set from the cache, built first when needed; the cache's notes are logged."""
        result, self._built = self._built, None
        if result is None:
            result = self.read()
        if result is None:
            result = self._build()
        for note in self.notes:
            log.warning("%s: %s", self.folders.name, note)
        return result

    def _build(self) -> T:
        self.folders.check_writable()
        self.notes = []
        return self.source.build()

    def is_valid(self) -> bool:
        """Whether the manifest matches the sources and the blobs' sizes (no hashing of the
        blobs: :meth:`load` checks their digests)."""
        return self.manifest() is not None

    def manifest(self) -> dict[str, Any] | None:
        """The manifest when it was made by this format, data set, parameters and sources and
        the blobs have their recorded sizes; None (rebuild) otherwise."""
        path, sources = self.folders.manifest_path, self.source.source_paths()
        if sources is None or not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            log.warning("%s is unreadable; rebuilding the cache", path)
            return None
        if not isinstance(manifest, dict) or any(
            manifest.get(k) != v for k, v in self._identity().items()
        ):
            log.info("the cache in %s was made differently; rebuilding it", self.folders.cache_dir)
            return None
        if not self._same_sources(manifest.get("sources", []), sources):
            log.info("the source files of %s changed; rebuilding the cache", self.folders.cache_dir)
            return None
        for name, entry in manifest.get("cache", {}).items():
            blob = self.folders.cache_dir / name
            if not blob.is_file() or blob.stat().st_size != entry.get("size"):
                log.warning("cache file %s is missing or has the wrong size; rebuilding", blob)
                return None
        return manifest

    def _identity(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "dataset": self.folders.name, "params": self.source.params()}

    def _same_sources(self, records: list[dict[str, Any]], sources: list[Path]) -> bool:
        return len(records) == len(sources) and all(
            same_source(r, p, self.folder_files) for r, p in zip(records, sources, strict=True)
        )

    def read(self) -> T | None:
        """The data set from a valid cache whose blobs have their digests; None otherwise."""
        manifest = self.manifest()
        if manifest is None:
            return None
        blobs = {}
        try:
            for name, entry in manifest["cache"].items():
                blob = (self.folders.cache_dir / name).read_bytes()
                if hashlib.sha256(blob).hexdigest() != entry.get("sha256"):
                    log.warning("cache file %s is corrupt (its sha256 differs); rebuilding", name)
                    return None
                blobs[name] = blob
            result = self.source.decode(blobs, manifest)
        except (KeyError, ValueError, OSError, TypeError) as error:
            cache = self.folders.cache_dir
            log.warning("the cache in %s is unreadable (%s); rebuilding", cache, error)
            return None
        self.notes = list(manifest.get("notes", []))
        return result

    def write(self, sources: list[Path], blobs: dict[str, bytes], extra: dict[str, Any]) -> None:
        """Write the blobs, then the manifest: identity, ``sources``' records, the blobs' sizes
        and digests, ``extra`` (what the data set records besides) and the notes."""
        cache_dir = self.folders.cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.folders.manifest_path.unlink(missing_ok=True)  # no manifest while the files change
        entries = {}
        for name, blob in blobs.items():
            atomic_write(cache_dir / name, blob)
            entries[name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
        manifest = {
            **self._identity(),
            "sources": [source_record(p, self.folder_files) for p in sources],
            "cache": entries,
            **extra,
            "notes": self.notes,
        }
        atomic_write(self.folders.manifest_path, json.dumps(manifest, indent=1).encode())


__all__ = [
    "CacheSource",
    "DataCache",
    "DataFolders",
    "npy_array",
    "npy_bytes",
    "same_source",
    "source_record",
]
