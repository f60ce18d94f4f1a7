"""Checkpoint files that are never half-written and never silently corrupt.

Every checkpoint the trainer writes (``last.ckpt``, ``previous.ckpt``, ``best.ckpt``) goes through
:class:`AtomicCheckpointIO`: it is written to a temporary name beside the target, flushed to disk
and renamed over it, so a kill or a full disk leaves the previous file whole; and it carries a
sha256 digest of its content (``hmrnn_sha256``), checked whenever a checkpoint is read. torch's
zip reader does not check its CRCs: a flipped bit in a tensor loads silently without the digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from hmrnn.config import ConfigError
from hmrnn.io import atomic_file

DIGEST_KEY = "hmrnn_sha256"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (the previous file of that name survives)."""


class CheckpointError(ConfigError):
    """A checkpoint cannot be used: unreadable, half-written, or its digest does not match."""


def _feed(h: Any, value: Any) -> None:
    """Hash ``value``'s content and structure (nested dicts, lists, tuples, tensors, scalars)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer, not a copy
    elif isinstance(value, dict):
        keys = sorted((k for k in value if k != DIGEST_KEY), key=repr)
        h.update(f"D{len(keys)}".encode())
        for key in keys:
            h.update(repr(key).encode())
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__[0]}{len(value)}".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(f"V{type(value).__name__}:{value!r};".encode())


def digest(checkpoint: dict[str, Any]) -> str:
    """sha256 of a checkpoint's content, its own digest entry left out."""
    h = hashlib.sha256()
    _feed(h, checkpoint)
    return h.hexdigest()


def verify(checkpoint: Any, path: str | Path) -> dict[str, Any]:
    """``checkpoint`` if it is a dict whose digest matches (or that has none: older files);
    CheckpointError naming ``path`` otherwise."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} does not hold a checkpoint (a {type(checkpoint).__name__})")
    saved = checkpoint.get(DIGEST_KEY)
    if saved is not None and saved != digest(checkpoint):
        raise CheckpointError(
            f"{path} is corrupt: its content no longer matches the sha256 digest written with it "
            "(a damaged disk or copy)"
        )
    return checkpoint


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; CheckpointError with one sentence when it is unusable."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except Exception as error:  # zip, pickle and OS errors alike: the file is not usable
        raise CheckpointError(
            f"cannot read {path} ({type(error).__name__}: {str(error)[:120]}); it is corrupt or "
            "half-written"
        ) from error
    return verify(checkpoint, path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes through a temporary name with a digest; reads verify it (see the module doc)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        path = Path(path)
        checkpoint[DIGEST_KEY] = digest(checkpoint)
        try:
            with atomic_file(path, per_process=False) as f:
                torch.save(checkpoint, f)
        except OSError as error:  # e.g. a full disk: the previous file is left intact
            raise CheckpointWriteError(
                f"writing {path} failed ({error.strerror or error}); the previous {path.name} is "
                f"intact: free space, then continue with python -m hmrnn.train "
                f"resume={run_folder_of(path)}"
            ) from error
        finally:
            checkpoint.pop(DIGEST_KEY, None)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        return read_checkpoint(path, map_location=map_location if map_location else "cpu")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder of a checkpoint in ``<run>/checkpoints/``."""
    folder = checkpoint.parent
    return folder.parent if folder.name == "checkpoints" else folder
