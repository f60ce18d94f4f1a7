"""Where the IAM-OnDB reference copies live (``../shared/data/iam-ondb``), and a config."""

from __future__ import annotations

from pathlib import Path

import pytest

from hmrnn.config import DataConfig

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
IAM = SHARED / "iam-ondb"
SAMPLE, FULL, LISTS = IAM / "sample", IAM / "full", IAM / "splits"
SAMPLE_FILES = sorted((SAMPLE / "lineStrokes").rglob("*.xml")) if SAMPLE.is_dir() else []

needs_sample = pytest.mark.skipif(
    not SAMPLE.is_dir(), reason=f"reference data {SAMPLE} is absent (see shared/data/README.md)"
)
needs_full = pytest.mark.skipif(
    not (FULL / "lineStrokes-all.tar.xz").is_file(),
    reason=f"reference archive {FULL}/lineStrokes-all.tar.xz is absent (see shared/data/README.md)",
)


def config(root: Path, local_dir: Path | str = "", **extra) -> DataConfig:
    cfg = DataConfig(root=str(root), batch_size=4)
    cfg.local_dir = str(local_dir)
    for key, value in extra.items():  # fields the lead adds to DataConfig (getattr in the code)
        setattr(cfg, key, value)
    return cfg
