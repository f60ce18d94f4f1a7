"""The sweep's state, ``DIR/sweep.json``: the sweep file's content and every run proposed,
with its values, command, run folder and outcome; rewritten atomically after every change.

A run is a dict: ``id``, ``values`` (the swept values), ``command``, ``run_dir``, ``state``
(``running``, ``finished``, ``failed``, ``stopped``), and as it goes ``pid``, ``exit_code``,
``early_terminated``, ``wall_seconds``, ``summary`` and ``history`` (what the engine proposes
the next run from).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hmrnn.config import ConfigError
from hmrnn.io import atomic_write


class SweepState:
    """``DIR/sweep.json``: the file's content and every run proposed, with its outcome."""

    def __init__(self, folder: Path, config: dict[str, Any], source: Path) -> None:
        self.folder = folder
        self.path = folder / "sweep.json"
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
        self.data: dict[str, Any] = {
            "sweep_id": f"{config.get('name') or source.stem}-{digest}",
            "file": str(source),
            "config": config,
            "runs": [],
        }
        if self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("config") != config:
                raise ConfigError(
                    f"{source} differs from the sweep recorded in {self.path}; keep the file as "
                    "it was to resume, or give another --dir for a new sweep"
                )
            self.data = saved

    @property
    def runs(self) -> list[dict[str, Any]]:
        return self.data["runs"]

    @runs.setter
    def runs(self, value: list[dict[str, Any]]) -> None:
        self.data["runs"] = value

    def number(self, run: dict[str, Any]) -> int:
        """The run's place in the sweep, from 1."""
        return next(i for i, r in enumerate(self.runs, 1) if r["id"] == run["id"])

    def log_path(self, run: dict[str, Any]) -> Path:
        """Where a run's training writes its output (every launch of it, appended)."""
        return self.folder / "logs" / f"{run['id']}.log"

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2))
