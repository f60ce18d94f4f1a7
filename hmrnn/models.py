"""The model choices (``model=<name>``): which recurrent cell each builds and what it checks.

A model is a recurrent cell (``hmlstm``: :class:`hmrnn.core.HMLSTM`; ``lstm``:
:class:`hmrnn.core.StackedLSTM`) with settings fixed or checked, plus its ``conf/model/<name>.yaml``
of default values. Stdlib only: configuration checks run before torch is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# settings only the HM-LSTM cell reads, and those only imposed boundaries read
HM_ONLY = ("model.boundary", "model.top_layer_boundary", "model.grad_through_ops", "slope.")
FIXED_ONLY = ("model.fixed_source", "model.fixed_periods")


@dataclass(frozen=True)
class ModelSpec:
    """One ``model=`` choice.

    ``cell``: the recurrent core built (a name of :data:`hmrnn.core.cells.CELLS`: ``hmlstm`` or
    ``lstm``); ``hierarchical``: the core has boundaries (HM-LSTM options, slope annealing,
    boundary metrics and figures apply); ``imposed``: the boundaries come from counters
    (``model.fixed_*``), not from the detectors; ``check``: raises a
    :class:`hmrnn.config.ConfigError` for settings the model cannot take; ``ignores``: prefixes
    of the dotted keys the model does not read (runs that differ only there are one variant in
    a report).
    """

    cell: str
    hierarchical: bool = True
    imposed: bool = False
    check: Callable[[Any], None] | None = None
    ignores: tuple[str, ...] = field(default=())


def detectors(model: Any) -> int:
    """Detector layers of a ``ModelConfig``: all but the top, unless ``top_layer_boundary``."""
    return model.num_layers - 1 + int(model.top_layer_boundary)


def _check_soft_gated(config: Any) -> None:
    from hmrnn.config import ConfigError

    if config.model.boundary != "soft":
        raise ConfigError(
            f"model=soft_gated needs model.boundary=soft, got {config.model.boundary!r}; "
            "use model=hmlstm for the step and bernoulli estimators"
        )


def _check_fixed_boundary(config: Any) -> None:
    from hmrnn.config import ConfigError

    periods, n = list(config.model.fixed_periods), detectors(config.model)
    if len(periods) != n or any(p < 1 for p in periods):
        raise ConfigError(
            f"model.fixed_periods needs one period >= 1 per detector layer ({n} for "
            f"model.num_layers={config.model.num_layers}), got {periods!r}"
        )


HMLSTM = ModelSpec("hmlstm", ignores=FIXED_ONLY)
SOFT_GATED = ModelSpec("hmlstm", check=_check_soft_gated, ignores=FIXED_ONLY)
FIXED_BOUNDARY = ModelSpec("hmlstm", imposed=True, check=_check_fixed_boundary)
LSTM = ModelSpec("lstm", hierarchical=False, ignores=HM_ONLY + FIXED_ONLY)
