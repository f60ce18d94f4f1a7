"""Data sets: downloads, file formats, vocabularies and batching order."""

from __future__ import annotations

from datamodules.stream import CharStreamDataModule, DataError, StreamSegments, Vocabulary
from hmrnn.config import DataConfig


def build_datamodule(config: DataConfig) -> CharStreamDataModule:
    """The DataModule that ``data.name`` names."""
    from datamodules.synthetic import SyntheticDataModule
    from datamodules.text import Enwik8DataModule, PTBCharDataModule, Text8DataModule

    registry: dict[str, type[CharStreamDataModule]] = {
        "synthetic": SyntheticDataModule,
        "ptb": PTBCharDataModule,
        "text8": Text8DataModule,
        "enwik8": Enwik8DataModule,
    }
    if config.name not in registry:
        raise DataError(f"data.name={config.name!r} is unknown; choose one of {sorted(registry)}")
    return registry[config.name](config)


__all__ = ["CharStreamDataModule", "DataError", "StreamSegments", "Vocabulary", "build_datamodule"]
