"""The Hierarchical Multiscale LSTM (model.md §§1, 2, 4, 5), with nn.LSTM's calling contract.

One step of layer l (1-based in model.md, 0-based in the code) computes one joint pre-activation

    s = U h_{t-1}^l + z_{t-1}^l * V h_{t-1}^{l+1} + z_t^{l-1} * W h_t^{l-1} + b      # (B, 4H+1)

with a single matrix multiply: the three inputs are gated first and concatenated, so
``s = [h_prev, z_prev * h_above, z_below * h_below] @ [U; V; W]^T + b`` (with layer norm the three
projections are normalised separately, so they run as one batched multiply instead). The first
layer's bottom-up projection ``W x_t`` is computed for the whole sequence in one multiply.

COPY / UPDATE / FLUSH are masks, never branches:

    flush = z_{t-1}^l,  update = (1 - flush) * z_t^{l-1},  copy = (1 - flush) * (1 - z_t^{l-1})
    c_t = (1 - copy) * i * g + (update * f + copy) * c_{t-1}
    h_t = (1 - copy) * o * tanh(c_t) + copy * h_{t-1}

which is the product form ``flush*(i*g) + update*(f*c + i*g) + copy*c`` rearranged using
``flush + update + copy = 1``. A COPY row (copy = 1) leaves h and c bit-identical.

:meth:`HMLSTM.forward` runs the same equations through the hand-written loop of
:mod:`hmrnn.core.fused` (its own backward through time, layer norm by hand, COPY skipping, the
per-step element-wise work in one C++ call); the autograd implementation of
:mod:`hmrnn.core.autograd_step` serves ``HMLSTM.fused = False``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from hmrnn.core.autograd_step import LN_EPS as LN_EPS  # re-exported: imported from here
from hmrnn.core.autograd_step import Taps, autograd_forward
from hmrnn.core.autograd_step import layer_norm as layer_norm  # re-exported
from hmrnn.core.boundary import BoundaryEstimator
from hmrnn.core.fused import WeightCache, fused_forward
from hmrnn.core.fused.graphs import graphed_call
from hmrnn.registry import ESTIMATORS


class HMLSTMState(NamedTuple):
    """Recurrent state after the last step; ``None`` in place of a state means zeros.

    Shape:
        h: (K, B, H) hidden state of every layer.
        c: (K, B, H) cell state of every layer.
        z: (K, B) boundary of every layer at the last step (column K-1 is zero unless the top
           layer has a boundary detector).
    """

    h: Tensor
    c: Tensor
    z: Tensor


class HMLSTM(nn.Module):
    """Hierarchical Multiscale LSTM (Chung, Ahn & Bengio, ICLR 2017).

    Args:
        input_size: H_in, the size of each input vector.
        hidden_size: H, the size of every layer's h and c.
        num_layers: K >= 1.
        layer_norm: normalise the recurrent, top-down and bottom-up projections separately
            (before the boundary gating) and c_t before its tanh (model.md §4).
        boundary: the boundary estimator's name in :data:`hmrnn.registry.ESTIMATORS`:
            ``"step"`` (straight-through), ``"bernoulli"`` (sampled in training), ``"soft"``
            (never discretised), or one registered since (:mod:`hmrnn.core.boundary`).
        top_layer_boundary: give the top layer a boundary detector so that it can FLUSH (a common
            departure from the paper, off by default).
        grad_through_ops: let the straight-through gradient reach z through the choice of
            operation (the mask products); ``False`` detaches the masks (the ``where`` form).
        batch_first: inputs and outputs are (B, T, ...) instead of (T, B, ...).
        detector_input_grad: the detectors' pre-activations pass their gradient to their
            inputs (the h's below, beside and above, and x), as in the paper; ``False`` keeps it
            to the z rows' own weights, bias and layer-norm gains (the z rows read their inputs
            detached: not in the paper, docs/hierarchy.md).
        z_bias_init: the initial bias of the z rows, one number for every detector or one per
            detector layer (bottom first); 0 (model.md §5) by default. Positive values start a
            detector firing on most steps, negative ones on few (docs/hierarchy.md).

    Inputs: input, state, boundaries
        input: (T, B, H_in).
        state: :class:`HMLSTMState` or ``None`` for zeros.
        boundaries: optional (T, B, K) imposed boundaries that replace the detectors (the
            fixed-boundary ablation); column K-1 is used only with ``top_layer_boundary``.

    Outputs: output, state, boundaries
        output: (T, B, K, H), every layer's h at every step.
        state: :class:`HMLSTMState` after the last step.
        boundaries: (T, B, K), z_t^l as used; column K-1 is zero unless ``top_layer_boundary``.

    Attributes (plain, not saved): ``fused`` (default True) runs the hand-written loop of
    :mod:`hmrnn.core.fused`; ``native`` (default True) lets that loop do each step's
    element-wise work in a fused cell: C++ on CPU where it builds (:mod:`hmrnn.core.fused.native`),
    Triton on CUDA (:mod:`hmrnn.core.fused.triton_cell`); False runs torch operations, "cpp" or
    "triton" names one (Triton on CPU runs in its interpreter: tests only);
    ``skip_copy`` (default True) lets it skip the work of COPY rows (CPU, evaluation, and
    training with imposed boundaries); ``cuda_graphs`` (default False) captures training passes
    on a GPU into CUDA graphs and replays them (:mod:`hmrnn.core.fused.graphs`). They change
    results only by rounding.
    ``fused_weights`` keeps that loop's weights, reordered and packed, between passes without
    autograd (:class:`hmrnn.core.fused.WeightCache`).

    Parameters (per layer l, G = 4H+1 rows with a detector, 4H without; rows are i, f, g, o, z):
        weight_ih_l{l}: (G, H_in or H) bottom-up;  weight_hh_l{l}: (G, H) recurrent;
        weight_td_l{l}: (G, H) top-down, all but the top layer;  bias_l{l}: (G,).
        With layer norm: ln_ih_l{l}, ln_hh_l{l}, ln_td_l{l} (G,) gains and ln_c_weight_l{l},
        ln_c_bias_l{l} (H,).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 3,
        *,
        layer_norm: bool = False,
        boundary: str = "step",
        top_layer_boundary: bool = False,
        grad_through_ops: bool = True,
        batch_first: bool = False,
        z_bias_init: float | Sequence[float] = 0.0,
        detector_input_grad: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be an integer >= 1, got {num_layers!r}")
        ESTIMATORS.get(boundary)  # an unknown name: UnknownChoice (a ValueError) naming them
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.layer_norm = layer_norm
        self.boundary = boundary
        self.top_layer_boundary = top_layer_boundary
        self.grad_through_ops = grad_through_ops
        self.batch_first = batch_first
        self.detector_input_grad = detector_input_grad
        n_detectors = sum(self.has_detector(l) for l in range(num_layers))
        if isinstance(z_bias_init, (int, float)):
            z_bias_init = [float(z_bias_init)] * n_detectors
        self.z_bias_init = tuple(float(v) for v in z_bias_init)
        if len(self.z_bias_init) != n_detectors:
            raise ValueError(
                f"z_bias_init needs one value per detector layer ({n_detectors}) or a single "
                f"number, got {list(z_bias_init)!r}"
            )
        self.fused = True  # run the hand-written loop (hmrnn.core.fused)
        self.native = True  # its per-step work in C++ (CPU) or Triton (CUDA): fused.native
        # and there skip the work of COPY rows: in evaluation, and in training with imposed
        # boundaries (layers with large weights only; hmrnn.core.fused.Loop.sparse_allowed)
        self.skip_copy = True
        self.cuda_graphs = False  # capture training passes into CUDA graphs (fused.graphs)
        self.fused_weights = WeightCache()  # that loop's weights, for passes without autograd
        self.register_buffer("slope", torch.tensor(1.0))
        self._slope_seen: tuple[Tensor, int, float] | None = None  # slope_value()'s copy
        self._register_parameters()
        self.reset_parameters()

    def _register_parameters(self) -> None:
        """The parameters of the class docstring, layer by layer (their order is the
        state_dict's)."""
        H = self.hidden_size
        for l in range(self.num_layers):
            G = self.gate_rows(l)
            fan_in = self.input_size if l == 0 else H
            self.register_parameter(f"weight_ih_l{l}", nn.Parameter(torch.empty(G, fan_in)))
            self.register_parameter(f"weight_hh_l{l}", nn.Parameter(torch.empty(G, H)))
            if self.has_top_down(l):
                self.register_parameter(f"weight_td_l{l}", nn.Parameter(torch.empty(G, H)))
            self.register_parameter(f"bias_l{l}", nn.Parameter(torch.empty(G)))
            if self.layer_norm:
                for kind in ("ih", "hh", "td") if self.has_top_down(l) else ("ih", "hh"):
                    self.register_parameter(f"ln_{kind}_l{l}", nn.Parameter(torch.empty(G)))
                self.register_parameter(f"ln_c_weight_l{l}", nn.Parameter(torch.empty(H)))
                self.register_parameter(f"ln_c_bias_l{l}", nn.Parameter(torch.empty(H)))

    # ----------------------------------------------------------------------------- structure
    @contextmanager
    def tapped(self, taps: Taps) -> Iterator[Taps]:
        """Within it, forward passes run the autograd implementation and record where the
        boundaries' gradients go into ``taps`` (:mod:`hmrnn.core.diagnostics`)."""
        self.__dict__["_taps"] = taps
        try:
            yield taps
        finally:
            del self.__dict__["_taps"]

    def set_slope(self, value: float) -> None:
        """Sets the hard sigmoid's slope (the annealing callback's call), remembering the value
        on the host so that the loop need not read it back from a GPU."""
        self.slope.fill_(value)
        self._slope_seen = (self.slope, self.slope._version, float(value))

    def slope_value(self) -> float:
        """The slope as a Python number; read from the buffer (a host-device synchronisation on
        a GPU) only when it changed by other means than :meth:`set_slope` (a checkpoint load,
        ``.to()``, an in-place write)."""
        seen = getattr(self, "_slope_seen", None)  # (a module pickled before it existed)
        if seen is None or seen[0] is not self.slope or seen[1] != self.slope._version:
            seen = self._slope_seen = (self.slope, self.slope._version, float(self.slope))
        return seen[2]

    def has_detector(self, l: int) -> bool:
        """Whether layer l computes a boundary z (every layer but the top, unless asked)."""
        return l < self.num_layers - 1 or self.top_layer_boundary

    def has_top_down(self, l: int) -> bool:
        """Whether layer l reads the layer above (every layer but the top)."""
        return l < self.num_layers - 1

    def gate_rows(self, l: int) -> int:
        """G: 4H gate rows, plus one z row if layer l has a detector."""
        return 4 * self.hidden_size + int(self.has_detector(l))

    def param(self, kind: str, l: int) -> Tensor:
        """The parameter ``{kind}_l{l}``, e.g. ``param("weight_hh", 0)``."""
        return getattr(self, f"{kind}_l{l}")

    @property
    def estimator(self) -> BoundaryEstimator:
        """The boundary estimator named by ``boundary`` (:data:`hmrnn.registry.ESTIMATORS`)."""
        return ESTIMATORS.get(self.boundary)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """model.md §5: orthogonal recurrent blocks, Xavier-uniform input and top-down blocks,
        zero biases except the forget gate (+1) and the z row (``z_bias_init``), unit
        layer-norm gains."""
        H = self.hidden_size
        for l in range(self.num_layers):
            G = self.gate_rows(l)
            blocks = [slice(k * H, (k + 1) * H) for k in range(4)] + [slice(4 * H, G)]
            for rows in blocks:
                if rows.start >= G:
                    continue
                nn.init.orthogonal_(self.param("weight_hh", l)[rows])
                nn.init.xavier_uniform_(self.param("weight_ih", l)[rows])
                if self.has_top_down(l):
                    nn.init.xavier_uniform_(self.param("weight_td", l)[rows])
            bias = self.param("bias", l)
            bias.zero_()
            bias[H : 2 * H] = 1.0  # forget gate
            if self.has_detector(l):
                bias[4 * H] = self.z_bias_init[l]
            if self.layer_norm:
                for name, p in self.named_parameters():
                    if name.startswith("ln_") and name.endswith(f"_l{l}"):
                        p.fill_(0.0 if "ln_c_bias" in name else 1.0)

    def z_rows(self) -> Iterator[tuple[str, nn.Parameter, slice]]:
        """Every parameter slice that feeds a z pre-activation, as (name, parameter, rows):
        row 4H of each detector layer's weights, bias and layer-norm gains."""
        z = slice(4 * self.hidden_size, 4 * self.hidden_size + 1)
        for l in range(self.num_layers):
            if not self.has_detector(l):
                continue
            for kind in ("weight_ih", "weight_hh", "weight_td", "bias", "ln_ih", "ln_hh", "ln_td"):
                p = getattr(self, f"{kind}_l{l}", None)
                if p is not None:
                    yield f"{kind}_l{l}", p, z

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"layer_norm={self.layer_norm}, boundary={self.boundary!r}, "
            f"top_layer_boundary={self.top_layer_boundary}, "
            f"grad_through_ops={self.grad_through_ops}, batch_first={self.batch_first}"
            + (f", z_bias_init={list(self.z_bias_init)}" if any(self.z_bias_init) else "")
            + ("" if self.detector_input_grad else ", detector_input_grad=False")
        )

    # ------------------------------------------------------------------------------- checks
    def check_inputs(
        self, input: Tensor, state: HMLSTMState | None, boundaries: Tensor | None
    ) -> None:
        """Raise ValueError naming the argument when a shape does not fit (time-major shapes)."""
        if input.dim() != 3:
            raise ValueError(
                f"input must be 3-d ({'B, T' if self.batch_first else 'T, B'}, input_size), "
                f"got shape {tuple(input.shape)}"
            )
        if input.size(-1) != self.input_size:
            raise ValueError(
                f"input's last dimension must equal input_size={self.input_size}, "
                f"got shape {tuple(input.shape)}"
            )
        T, B = (input.size(1), input.size(0)) if self.batch_first else input.shape[:2]
        K, H = self.num_layers, self.hidden_size
        if boundaries is not None:
            want = (B, T, K) if self.batch_first else (T, B, K)
            if tuple(boundaries.shape) != want:
                raise ValueError(
                    f"boundaries must have shape {want} (num_layers={K}), "
                    f"got {tuple(boundaries.shape)}"
                )
        if state is not None:
            if not isinstance(state, tuple) or len(state) not in (3, 4):  # 4: FixedState
                raise ValueError("state must be an HMLSTMState(h, c, z) or None")
            wants = {"h": (K, B, H), "c": (K, B, H), "z": (K, B)}
            for name, tensor in zip(("h", "c", "z"), state[:3], strict=True):
                if tuple(tensor.shape) != wants[name]:
                    raise ValueError(
                        f"state.{name} must have shape {wants[name]}, got {tuple(tensor.shape)}"
                    )

    def zero_state(self, batch_size: int, like: Tensor) -> HMLSTMState:
        """The all-zeros state for a batch, on ``like``'s device and dtype."""
        K, H = self.num_layers, self.hidden_size
        h = like.new_zeros(K, batch_size, H)
        return HMLSTMState(h, torch.zeros_like(h), like.new_zeros(K, batch_size))

    # ------------------------------------------------------------------------------ forward
    def forward(
        self,
        input: Tensor,
        state: HMLSTMState | None = None,
        boundaries: Tensor | None = None,
    ) -> tuple[Tensor, HMLSTMState, Tensor]:
        self.check_inputs(input, state, boundaries)
        if self.cuda_graphs and "_taps" not in self.__dict__:  # captured and replayed where
            # it can be (CUDA, training); not while diagnostics tap the autograd path
            B = input.size(0 if self.batch_first else 1)
            full = self.zero_state(B, input) if state is None else HMLSTMState(*state[:3])
            replayed = graphed_call(self, input, full, boundaries)
            if replayed is not None:
                return replayed
        if self.batch_first:
            input = input.transpose(0, 1)
            boundaries = None if boundaries is None else boundaries.transpose(0, 1)
        B = input.size(1)
        state = self.zero_state(B, input) if state is None else HMLSTMState(*state[:3])
        taps = self.__dict__.get("_taps")
        if self.fused and taps is None:
            output, h_n, c_n, z_n, bounds = fused_forward(self, input, state, boundaries)
        else:
            output, h_n, c_n, z_n, bounds = autograd_forward(self, input, state, boundaries, taps)
        if self.batch_first:
            output, bounds = output.transpose(0, 1), bounds.transpose(0, 1)
        return output, HMLSTMState(h_n, c_n, z_n), bounds

    def step(
        self,
        input: Tensor,
        state: HMLSTMState | None = None,
        boundaries: Tensor | None = None,
    ) -> tuple[Tensor, HMLSTMState, Tensor]:
        """One time step for generation, through the same code as :meth:`forward`.

        Shape: input (B, H_in); output (B, K, H); boundaries (B, K) given and returned.
        """
        if input.dim() != 2:
            raise ValueError(f"step's input must be 2-d (B, input_size), got {tuple(input.shape)}")
        dim = 1 if self.batch_first else 0
        imposed = None if boundaries is None else boundaries.unsqueeze(dim)
        output, state, bounds = self.forward(input.unsqueeze(dim), state, imposed)
        return output.squeeze(dim), state, bounds.squeeze(dim)

    # ------------------------------------------------------------------------------ pieces
    def step_weight(self, l: int) -> Tensor:
        """Weights of the per-step multiply of layer l.

        Without layer norm: (n*H, G), the recurrent, top-down and (for l > 0) bottom-up blocks
        side by side, transposed. With layer norm: (n, H, G), the same blocks stacked for one
        batched multiply.
        """
        blocks = [self.param("weight_hh", l)]
        if self.has_top_down(l):
            blocks.append(self.param("weight_td", l))
        if l > 0:
            blocks.append(self.param("weight_ih", l))
        if self.layer_norm:
            return torch.stack(blocks).transpose(1, 2)
        return torch.cat(blocks, dim=1).t()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


__all__ = ["HMLSTM", "HMLSTMState", "count_parameters"]
