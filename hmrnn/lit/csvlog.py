"""The CSV log of a run, kept whole across stops and resumes.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when a resumed run creates its writer, so after
a resume the log held only the rows since; this one appends to it (``hmrnn.train`` first drops
the rows from after the checkpoint, which the resumed run logs again).
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    """Appends to an existing ``metrics.csv`` and keeps all its columns when new ones come."""

    def _check_log_dir_exists(self) -> None:
        """Lightning's writer deletes the old metrics here; a resumed run keeps them."""

    def save(self) -> None:
        if self.metrics and not self.metrics_keys and self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives a resume (see the module doc)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
