"""The three registries: models, data sets and boundary estimators (stdlib only).

Each maps the name a user writes (``model=...``, ``data=...``, ``model.boundary=...``) to what
implements it. The built-in entries are import paths (``"module:attribute"``), resolved on first
use, so that configuration checks and ``--help`` read the names without importing torch or
Lightning; an extension registers its object directly, from any module (a test file included):

    from hmrnn.registry import ESTIMATORS
    ESTIMATORS.register("my_estimator", MyEstimator())

Configuration validation (:func:`hmrnn.config.validate`), the commands' ``--help`` and the sweep
files' checks all read these, so a registered name is a valid choice everywhere at once.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownChoice(ValueError):
    """A name that no registry entry answers to (configuration checks name the choices first)."""


class Registry(Generic[T]):
    """Names -> entries, in registration order; ``key`` is the setting that chooses one."""

    def __init__(self, key: str, builtins: dict[str, str]) -> None:
        self.key = key
        self._entries: dict[str, T | str] = dict(builtins)

    def register(self, name: str, entry: T | str, *, replace: bool = False) -> None:
        """Add ``entry`` (an object, or a ``"module:attribute"`` path) under ``name``."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.key}={name!r} is registered already (replace=True)")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        """The entry of ``name`` (imported on first use); UnknownChoice naming the choices."""
        if name not in self._entries:
            raise UnknownChoice(unknown_choice(self.key, name, self.names()))
        entry = self._entries[name]
        if isinstance(entry, str):
            module, _, attribute = entry.partition(":")
            entry = getattr(importlib.import_module(module), attribute)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]


def unknown_choice(key: str, value: Any, options: tuple[str, ...] | list[str]) -> str:
    """``key='x' is not a valid choice (did you mean 'y'?); choose one of: a, b``."""
    close = difflib.get_close_matches(str(value), list(options), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{key}={value!r} is not a valid choice{hint}; choose one of: {', '.join(options)}"


# name -> what implements it (hmrnn.models.ModelSpec: its recurrent cell and its checks)
MODELS: Registry[Any] = Registry(
    "model.name",
    {
        "hmlstm": "hmrnn.models:HMLSTM",
        "soft_gated": "hmrnn.models:SOFT_GATED",
        "fixed_boundary": "hmrnn.models:FIXED_BOUNDARY",
        "lstm": "hmrnn.models:LSTM",
    },
)

# name -> the LightningDataModule class (datamodules)
DATASETS: Registry[Any] = Registry(
    "data.name",
    {
        "synthetic": "datamodules.synthetic:SyntheticDataModule",
        "ptb": "datamodules.text:PTBCharDataModule",
        "text8": "datamodules.text:Text8DataModule",
        "enwik8": "datamodules.text:Enwik8DataModule",
        "iam_ondb": "datamodules.iam:IAMOnDBDataModule",
    },
)

# name -> the boundary estimator (hmrnn.core.boundary)
ESTIMATORS: Registry[Any] = Registry(
    "model.boundary",
    {
        "step": "hmrnn.core.boundary:STEP",
        "step_leaky": "hmrnn.core.boundary:STEP_LEAKY",
        "bernoulli": "hmrnn.core.boundary:BERNOULLI",
        "soft": "hmrnn.core.boundary:SOFT",
    },
)
