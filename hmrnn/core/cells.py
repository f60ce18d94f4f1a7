"""The recurrent cores a model can be built on (``ModelSpec.cell``), by name.

    rnn = build_cell("hmlstm", input_size, hidden_size, num_layers, {"layer_norm": True, ...})

Each builder takes the input size, H, K and the cell's keyword options, and returns a module with
:class:`HMLSTM`'s calling contract ``rnn(x, state, boundaries) -> (output, state, boundaries)``.
A new core is one function added to :data:`CELLS` (or ``CELLS[name] = builder`` from any module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from hmrnn.core.hmlstm import HMLSTM
from hmrnn.core.lstm import StackedLSTM


def _hmlstm(input_size: int, hidden_size: int, num_layers: int, **options: Any) -> nn.Module:
    return HMLSTM(input_size, hidden_size, num_layers, **options)


def _lstm(input_size: int, hidden_size: int, num_layers: int, **options: Any) -> nn.Module:
    # the HM-LSTM's own options (boundary, ...) mean nothing to it
    return StackedLSTM(
        input_size, hidden_size, num_layers, layer_norm=options.get("layer_norm", False)
    )


CELLS: dict[str, Callable[..., nn.Module]] = {"hmlstm": _hmlstm, "lstm": _lstm}

# the cells that take imposed boundaries (``boundaries=``) and report their own
HIERARCHICAL = {"hmlstm"}


def build_cell(
    name: str, input_size: int, hidden_size: int, num_layers: int, options: dict[str, Any]
) -> nn.Module:
    """The recurrent core ``name``; ValueError naming the known ones."""
    if name not in CELLS:
        raise ValueError(f"cell must be one of {sorted(CELLS)}, got {name!r}")
    return CELLS[name](input_size, hidden_size, num_layers, **options)
