from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _no_wandb_mode_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    os.environ.pop("HMRNN_RUN_NAME", None)
