"""What the commands that read a trained model share: their arguments and loading the module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hmrnn.config import ConfigError


def parse_arguments(
    argv: list[str], defaults: dict[str, str], command: str
) -> tuple[Path, dict[str, str]]:
    """``<checkpoint> [key=value ...]`` -> (checkpoint, options over ``defaults``); ConfigError
    for a missing checkpoint or an unknown key."""
    if not argv or "=" in argv[0]:
        raise ConfigError(f"usage: python -m {command} <checkpoint> [key=value ...]")
    options = dict(defaults)
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in defaults:
            raise ConfigError(
                f"argument {arg!r}: expected one of {', '.join(defaults)} as key=value"
            )
        options[key] = value
    path = Path(argv[0])
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist")
    return path, options


def load_module(checkpoint: Path) -> Any:
    """The LightningModule a checkpoint holds (character LM or handwriting), on the CPU, in
    evaluation mode; CheckpointError (a ConfigError) when the file is corrupt."""
    from hmrnn.lit.checkpoint_io import read_checkpoint  # Lightning: not for --help

    hparams = read_checkpoint(checkpoint).get("hyper_parameters", {})  # verified by its digest
    if "config" not in hparams:
        raise ConfigError(f"{checkpoint} is not a checkpoint written by hmrnn.train")
    if "mean" in hparams:
        from hmrnn.lit.handwriting import LitHandwriting

        return LitHandwriting.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    from hmrnn.lit.module import LitCharLM

    return LitCharLM.load_from_checkpoint(checkpoint, map_location="cpu").eval()
