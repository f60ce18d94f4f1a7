"""Data sets: downloads, file formats, vocabularies and batching order.

Every data set is a :class:`DataSetModule` (``datamodules.base``): the interface the commands
use. Text is a :class:`CharStreamDataModule` (``stream``: a stream of symbols; ``synthetic``,
``text``), handwriting an ``IAMOnDBDataModule`` (``iam``: sequences of points, parsed by
``iam_format``, split by ``iam_splits``, batched by ``sequences``). ``cache`` keeps what a
file-backed data set parsed; ``download`` fetches files.
"""

from __future__ import annotations

from datamodules.base import DataError, DataSetModule
from datamodules.stream import CharStreamDataModule, StreamSegments, Vocabulary
from hmrnn.config import DataConfig
from hmrnn.registry import DATASETS, UnknownChoice


def build_datamodule(config: DataConfig) -> DataSetModule:
    """The data set that ``data.name`` names (``hmrnn.registry.DATASETS``); DataError naming
    the choices when it names none."""
    try:
        cls = DATASETS.get(config.name)
    except UnknownChoice as error:
        raise DataError(str(error)) from error
    return cls(config)


__all__ = [
    "CharStreamDataModule",
    "DataError",
    "DataSetModule",
    "StreamSegments",
    "Vocabulary",
    "build_datamodule",
]
