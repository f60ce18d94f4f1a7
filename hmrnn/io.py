"""File writing that never leaves a half-written file under the final name (stdlib only)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | Path, per_process: bool = True) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through: a temporary name beside it, flushed to disk and
    renamed over ``path`` when the block ends without an error (then the rename is flushed too),
    removed when it raises.

    A reader sees the old file or the new one, never a mix; a kill leaves at most a stray
    ``.<name>.<pid>.tmp`` (``.<name>.tmp`` without ``per_process``, for a file that one process
    writes). The folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".{os.getpid()}.tmp" if per_process else ".tmp"
    tmp = path.with_name(f".{path.name}{suffix}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
