"""Buffers the loop reuses from one pass to the next.

A training step of the loop allocates tens to hundreds of MB of (T, B, ...) buffers. Fresh from
the allocator, large blocks come as new pages from the operating system, and the first write to
each page faults: at H = 256, B = 64 with layer norm that doubled the time of the element-wise
work (docs/performance.md). The pool keeps the buffers of a finished pass and hands them to the
next pass that asks for the same shape, so that steady training touches no new pages.

A loop returns its buffers when it is garbage-collected (after its backward, when autograd lets
go of the graph), so a buffer is never handed out twice while in use. At most
:data:`KEEP_BYTES` of free buffers are kept, the shapes used least recently given up first
(validation's shapes do not crowd out training's); ``HMRNN_BUFFER_POOL=0`` turns the pool off.
While a CUDA graph is captured the pool is bypassed (a graph's buffers are its own).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch
from torch import Tensor

KEEP_BYTES = 2 << 30
"""The most free buffer memory the pool keeps (2 GiB; a training step of the paper's PTB model
at batch 64 returns about 0.4 GB)."""

Key = tuple[tuple[int, ...], torch.dtype, torch.device, bool]
"""Shape, dtype, device, and whether an inference tensor (made under torch.inference_mode, which
only that mode may write to)."""


class BufferPool:
    """Free tensors by shape, dtype and device."""

    def __init__(self, keep_bytes: int = KEEP_BYTES) -> None:
        self.keep_bytes = keep_bytes
        self._free: OrderedDict[Key, list[Tensor]] = OrderedDict()  # least recently used first
        self._bytes = 0
        self._lock = threading.Lock()
        self.enabled = os.environ.get("HMRNN_BUFFER_POOL", "1").strip() not in ("0", "false")

    def take(self, like: Tensor, *shape: int, zero: bool = False) -> Tensor:
        """A tensor of ``shape`` with ``like``'s dtype and device: a free one if there is one
        (its contents are stale unless ``zero``), else new."""
        key = (tuple(shape), like.dtype, like.device, torch.is_inference_mode_enabled())
        if capturing(like):  # a CUDA graph's buffers are its own: never from or to the pool
            return like.new_zeros(shape) if zero else like.new_empty(shape)
        with self._lock:
            free = self._free.get(key)
            out = free.pop() if free else None
            if out is not None:
                self._bytes -= _nbytes(out)
                self._free.move_to_end(key)
        if out is None:
            return like.new_zeros(shape) if zero else like.new_empty(shape)
        return out.zero_() if zero else out

    def give(self, tensors: list[Tensor]) -> None:
        """Returns ``tensors`` (no longer used by anyone) to the pool."""
        if not self.enabled or any(capturing(x) for x in tensors[:1]):
            return
        with self._lock:
            for x in tensors:
                size = _nbytes(x)
                if size > self.keep_bytes:
                    continue
                key = (tuple(x.shape), x.dtype, x.device, x.is_inference())
                self._free.setdefault(key, []).append(x)
                self._free.move_to_end(key)
                self._bytes += size
                while self._bytes > self.keep_bytes:  # give up the least recently used
                    oldest, free = next(iter(self._free.items()))
                    self._bytes -= _nbytes(free.pop())
                    if not free:
                        del self._free[oldest]

    def clear(self) -> None:
        """Frees every kept buffer."""
        with self._lock:
            self._free.clear()
            self._bytes = 0

    @property
    def kept_bytes(self) -> int:
        return self._bytes


def capturing(like: Tensor) -> bool:
    """Whether a CUDA graph is being captured on the current stream (``like`` a CUDA tensor)."""
    return like.is_cuda and torch.cuda.is_current_streamcapturing()


def _nbytes(x: Tensor) -> int:
    return x.numel() * x.element_size()


POOL = BufferPool()
"""The process's pool (the loop's buffers are plain CPU or GPU tensors)."""
