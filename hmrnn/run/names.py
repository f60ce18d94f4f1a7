"""What a run is called: its default folder name and the run id a sweep agent gave it (stdlib
only, so that the sweep runner names run folders without importing Lightning)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hmrnn.config import Config


def sweep_run_id() -> str:
    """The W&B run id a sweep agent (``wandb agent`` or ``python -m hmrnn.sweep``) assigned to
    this process through ``WANDB_SWEEP_ID`` / ``WANDB_RUN_ID``; empty outside a sweep."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return os.environ.get("WANDB_RUN_ID", "")
    return ""


def default_run_name(config: Config, stamp: str) -> str:
    """``<experiment>-<model>-<stamp>`` (``run`` when no experiment was chosen)."""
    return f"{config.experiment or 'run'}-{config.model.name}-{stamp}"
