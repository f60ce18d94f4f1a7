"""Silence the library messages that every run printed and that say nothing about the run.

Each filter names one message, so that a real warning (a stuck boundary detector, a
non-finite loss, a data problem) still reaches the user; see :data:`HARMLESS` for why each is
harmless here. :func:`quiet` is idempotent and called where a Trainer is built.
"""

from __future__ import annotations

import logging
import re
import warnings

# (logger or warning, pattern of the message, why it is harmless in this project)
HARMLESS: tuple[tuple[str, str, str], ...] = (
    ("log", r"(GPU|TPU|HPU) available: ", "the devices used are in results.json's hardware"),
    ("log", r"💡 Tip: ", "Lightning's advertisement of its cloud logger"),
    (
        "log",
        r"`Trainer\((limit_\w+|val_check_interval)=1(\.0)?\)` was configured so ",
        "restates the default that config.yaml already shows",
    ),
    (
        "warning",
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        "a deprecation inside Lightning's own code (torch's pytree), nothing a user can change",
    ),
    (
        "warning",
        r"Checkpoint directory .* exists and is not empty",
        "a resumed run writes into its own checkpoint folder on purpose",
    ),
    (
        "warning",
        r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
        "Lightning's all_gather (DDP checkpoints gather every rank's carried state) calls it; "
        "the gathered values are right",
    ),
    (
        "warning",
        r"It is recommended to use `self\.log\('(val/|test/|slope)",
        "these values come from torchmetrics metrics, already reduced over the ranks (or, for "
        "the slope, equal on every rank)",
    ),
)

_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _DropMessages(logging.Filter):
    def __init__(self, patterns: list[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet() -> None:
    """Install the filters of :data:`HARMLESS` (once per process)."""
    logged = [pattern for kind, pattern, _ in HARMLESS if kind == "log"]
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(logged))
    for kind, pattern, _ in HARMLESS:
        if kind == "warning":
            warnings.filterwarnings("ignore", message=pattern)
