"""Downloads that never leave a half-written file under the final name.

:func:`fetch` writes to ``<dest>.part``, resumes an interrupted download with an HTTP Range request
when the server answers ``206 Partial Content`` (and starts over cleanly when it does not), checks
the size against ``Content-Length`` and the sha256 digest, and only then renames the ``.part`` file
to ``dest``. Every failure is a :class:`~datamodules.stream.DataError` whose one sentence names the
URL or file and what to do.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from datamodules.base import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def sha256_of(path: Path | str, chunk_size: int = CHUNK) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def part_path(dest: Path) -> Path:
    """Where :func:`fetch` writes ``dest`` before it is complete and verified."""
    return dest.with_suffix(dest.suffix + ".part")


class _Progress:
    """A byte counter on stderr: tqdm when installed, else a line every 10%."""

    def __init__(self, name: str, total: int | None, initial: int, enabled: bool) -> None:
        self.bar = None
        self.enabled = enabled
        self.name, self.total, self.done, self.shown = name, total, initial, -1
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with lightning
            return
        self.bar = tqdm(
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name,
            file=sys.stderr,
            leave=True,
        )

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.total:
            tenth = 10 * self.done // self.total
            if tenth != self.shown:
                self.shown = tenth
                print(f"{self.name}: {10 * tenth}%", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _request(url: str, offset: int, auth: tuple[str, str] | None) -> urllib.request.Request:
    headers = {"User-Agent": "hmrnn-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    if auth is not None:
        user, password = auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {token}"
    return urllib.request.Request(url, headers=headers)


def _open(url: str, offset: int, auth, timeout: float, dest: Path):
    """The response, and the offset it starts at (0 when the server ignored the Range)."""
    try:
        response = urllib.request.urlopen(_request(url, offset, auth), timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part is not a prefix we can continue: start over
            error.close()
            return _open(url, 0, auth, timeout, dest)
        raise DataError(
            f"downloading {url} failed with HTTP {error.code} {error.reason}; check the URL "
            f"(and credentials), or download the file yourself and place it at {dest}"
        ) from error
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise DataError(
            f"could not download {url} ({reason}); check the network connection, or download "
            f"the file yourself and place it at {dest}"
        ) from error
    if offset and response.status == 206:
        content_range = response.headers.get("Content-Range", "")
        if content_range.startswith(f"bytes {offset}-"):
            return response, offset
        response.close()  # an answer to some other range: start over
        return _open(url, 0, auth, timeout, dest)
    return response, 0


def _copy(response, out: BinaryIO, progress: _Progress, chunk_size: int) -> int:
    received = 0
    while True:
        try:
            block = response.read(chunk_size)
        except http.client.IncompleteRead as error:
            out.write(error.partial)
            received += len(error.partial)
            raise
        if not block:
            return received
        out.write(block)
        received += len(block)
        progress.update(len(block))


def _receive(
    url: str,
    dest: Path,
    auth: tuple[str, str] | None,
    timeout: float,
    chunk_size: int,
    progress: bool,
) -> tuple[int, int | None]:
    """Download ``url`` into ``dest``'s ``.part`` file (continued where the server allows); the
    size of the ``.part`` file after it and the size the server announced (None: unknown)."""
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    response, offset = _open(url, offset, auth, timeout, dest)
    with response:
        length = response.headers.get("Content-Length")
        expected = offset + int(length) if length is not None and length.isdigit() else None
        if offset:
            log.info("resuming %s at byte %d", url, offset)
        bar = _Progress(dest.name, expected, offset, progress)
        try:
            with open(part, "ab" if offset else "wb") as out:
                received = offset + _copy(response, out, bar, chunk_size)
                out.flush()
                os.fsync(out.fileno())
        except (OSError, http.client.HTTPException) as error:
            raise DataError(
                f"the download of {url} broke off ({error}); run again to resume it from "
                f"{part}, or download the file yourself and place it at {dest}"
            ) from error
        finally:
            bar.close()
    return received, expected


def fetch(
    url: str,
    dest: Path | str,
    sha256: str | None,
    *,
    progress: bool = True,
    auth: tuple[str, str] | None = None,
    timeout: float = 60.0,
    chunk_size: int = CHUNK,
) -> Path:
    """Download ``url`` to ``dest`` (verified by ``sha256`` when given) and return ``dest``.

    An existing ``dest`` with the right digest (or any ``dest`` when ``sha256`` is None) is kept
    as is; one with a wrong digest is downloaded again. The bytes go to ``<dest>.part`` first; an
    existing ``.part`` is continued with a Range request when the server supports it. A body
    shorter than its ``Content-Length`` raises :class:`DataError` and keeps the ``.part`` for the
    next attempt; a digest mismatch deletes it and raises. ``auth``: ``(user, password)`` for
    HTTP basic authentication (never stored).
    """
    dest = Path(dest)
    sha256 = sha256.lower() if sha256 else None
    if dest.exists():
        if sha256 is None or sha256_of(dest) == sha256:
            return dest
        log.warning("%s does not have the expected sha256 %s; downloading it again", dest, sha256)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if sha256 is not None and part.exists() and sha256_of(part) == sha256:
        os.replace(part, dest)  # complete and verified, only the rename was missing
        return dest
    received, expected = _receive(url, dest, auth, timeout, chunk_size, progress)
    if expected is not None and received != expected:
        raise DataError(
            f"the download of {url} was cut off after {received:,} of {expected:,} bytes; run "
            f"again to resume it from {part}, or download the file yourself and place it at {dest}"
        )
    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink()
            raise DataError(
                f"{dest.name} downloaded from {url} has sha256 {actual} but {sha256} was "
                f"expected; the download was deleted: run again, or download the file yourself, "
                f"check its digest and place it at {dest}"
            )
    os.replace(part, dest)
    return dest
