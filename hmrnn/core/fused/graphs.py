"""CUDA graphs of the loop: a training segment's forward and backward captured once, replayed.

Outside a graph every layer and step costs a few kernel launches from Python (3 forward and 3
backward without layer norm, tests/core/test_triton.py); at B = 64 on a GPU each launch does
microseconds of work, so a step is bound by launching. With ``cuda_graphs`` on
(``HMLSTM.cuda_graphs`` / ``StackedLSTM.cuda_graphs``, ``trainer.cuda_graphs=true`` in a run) the
first calls of each shape run eagerly a few times (warm-up), then
:func:`torch.cuda.make_graphed_callables` captures the forward and the backward, and later calls
of that shape replay them: a segment is two graph launches.

What makes the loop capturable: nothing in it waits for the device (no host synchronisation:
tests/core/test_triton.py checks every operation of a training step), shapes are static per
(T, B), the buffer pool is bypassed while capturing (:mod:`.pool`), and the Triton cell reads the
slope from the module's buffer on the device, so the annealed slope reaches a replay. What is
not: estimators whose ``sample``/``grad`` run in Python with the slope as a number (bernoulli in
training); their graphs are keyed by the slope too, so annealing re-captures them (step and soft,
the paper's estimators, are not). Graphs are made for passes with autograd (training); passes
without it run eagerly. CPU tensors always run eagerly.

A replay writes into the graph's own output tensors: a call's outputs are valid until the next
call of the same shape (a TBPTT segment reads its outputs before the next segment starts, and
carries its state detached, which the next call copies in).

No GPU was lent while this was written: the capture itself is exercised only by
``benchmarks/gpu_check.py`` (graphed against eager, on the device); the CPU tests cover the
bookkeeping with a stand-in for the capture.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

MAX_GRAPHS = 4
"""Graphs kept per module (shapes: training's, and a last short batch), least recently used
dropped first."""

WARMUP = 3
"""Eager calls of a shape before it is captured (make_graphed_callables' own warm-up follows)."""


class _Flat(nn.Module):
    """The module's forward with flat tensor inputs and outputs, as graphs need."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: Tensor, h: Tensor, c: Tensor, z: Tensor, *bounds: Tensor):
        from hmrnn.core.hmlstm import HMLSTMState

        out, state, b = self.rnn(x, HMLSTMState(h, c, z), bounds[0] if bounds else None)
        return out, state.h, state.c, state.z, b


class CudaGraphs:
    """Per shape of call, the module's captured forward and backward (see the module doc).

    ``capture`` is :func:`torch.cuda.make_graphed_callables` (replaceable in tests).
    """

    def __init__(self, rnn: nn.Module, capture: Callable[..., Any] | None = None) -> None:
        self.rnn = rnn
        self.capture = capture or torch.cuda.make_graphed_callables
        self.graphs: OrderedDict[tuple, Callable[..., Any]] = OrderedDict()
        self.seen: dict[tuple, int] = {}
        self.inside = False  # the module's forward called from here (warm-up, capture): eager
        self.captures = 0

    def __getstate__(self) -> dict[str, Any]:
        """A copy or pickle of the module carries no graphs (they are the device's)."""
        return {"rnn": self.rnn}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["rnn"])  # type: ignore[misc]

    def key(self, x: Tensor, state, boundaries: Tensor | None) -> tuple:
        """What a graph is specific to."""
        from hmrnn.core.fused.cell import LoopSpec

        slope = None
        if hasattr(self.rnn, "slope_value"):
            spec = LoopSpec.of(self.rnn, self.rnn.training, x.device, x.dtype)
            python_side = any(spec.detector) and (spec.sample_mode == 0 or spec.grad_mode == 0)
            slope = self.rnn.slope_value() if python_side or not spec.triton else None
        cast = None
        if torch.is_autocast_enabled(x.device.type):
            cast = torch.get_autocast_dtype(x.device.type)
        tensors = (x, *state, *(() if boundaries is None else (boundaries,)))
        return (
            tuple((tuple(t.shape), t.dtype, t.requires_grad) for t in tensors),
            self.rnn.training,
            cast,
            slope,
        )

    def wanted(self, x: Tensor) -> bool:
        """Whether this call may use a graph: CUDA, autograd on, not inside a capture."""
        return (
            not self.inside
            and x.is_cuda
            and torch.is_grad_enabled()
            and not torch.cuda.is_current_stream_capturing()
        )

    def __call__(self, x: Tensor, state, boundaries: Tensor | None):
        """The module's outputs (output, state, boundaries) for this call."""
        from hmrnn.core.hmlstm import HMLSTMState

        key = self.key(x, state, boundaries)
        args = (x, *state, *(() if boundaries is None else (boundaries,)))
        graphed = self.graphs.get(key)
        if graphed is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] <= WARMUP:
                return self._eager(args)
            graphed = self._capture(key, args)
        self.graphs.move_to_end(key)
        out, h, c, z, b = graphed(*args)
        return out, HMLSTMState(h, c, z), b

    def _eager(self, args: tuple[Tensor, ...]):
        from hmrnn.core.hmlstm import HMLSTMState

        self.inside = True
        try:
            out, h, c, z, b = _Flat(self.rnn)(*args)
        finally:
            self.inside = False
        return out, HMLSTMState(h, c, z), b

    def _capture(self, key: tuple, args: tuple[Tensor, ...]) -> Callable[..., Any]:
        samples = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        self.inside = True
        try:
            cast = key[2]
            device = args[0].device.type
            # make_graphed_callables refuses autocast's weight cache: the same autocast without it
            with torch.autocast(device, dtype=cast, enabled=cast is not None, cache_enabled=False):
                graphed = self.capture(_Flat(self.rnn), samples)
        finally:
            self.inside = False
        self.captures += 1
        log.info("captured CUDA graphs of the loop for %s (%d so far)", key[0], self.captures)
        self.graphs[key] = graphed
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graphed


def graphed_call(rnn: nn.Module, x: Tensor, state, boundaries: Tensor | None):
    """``rnn``'s forward through its :class:`CudaGraphs` where a graph may be used, else None
    (the caller runs eagerly)."""
    graphs = rnn.__dict__.get("_cuda_graphs")
    if graphs is None:
        graphs = rnn.__dict__["_cuda_graphs"] = CudaGraphs(rnn)
    if not graphs.wanted(x):
        return None
    return graphs(x, state, boundaries)
