"""Data sets: downloads, file formats, vocabularies and batching order."""

from __future__ import annotations

from typing import Any

from datamodules.stream import CharStreamDataModule, DataError, StreamSegments, Vocabulary
from hmrnn.config import DataConfig


def build_datamodule(config: DataConfig) -> Any:
    """The DataModule that ``data.name`` names (a CharStreamDataModule or IAMOnDBDataModule)."""
    from datamodules.iam import IAMOnDBDataModule
    from datamodules.synthetic import SyntheticDataModule
    from datamodules.text import Enwik8DataModule, PTBCharDataModule, Text8DataModule

    registry: dict[str, Any] = {
        "iam_ondb": IAMOnDBDataModule,
        "synthetic": SyntheticDataModule,
        "ptb": PTBCharDataModule,
        "text8": Text8DataModule,
        "enwik8": Enwik8DataModule,
    }
    if config.name not in registry:
        raise DataError(f"data.name={config.name!r} is unknown; choose one of {sorted(registry)}")
    return registry[config.name](config)


__all__ = ["CharStreamDataModule", "DataError", "StreamSegments", "Vocabulary", "build_datamodule"]
