"""Compose a run's configuration: schema <- data <- model <- experiment <- command line.

    python -m hmrnn.train experiment=demo model=lstm model.hidden_size=256 trainer.max_epochs=2

``experiment=``, ``model=`` and ``data=`` choose YAML files in ``conf/``; every other argument is a
dotted ``key=value`` override. An experiment file may choose the model and data files in a
``defaults:`` block; the command line's choice wins. OmegaConf's struct mode makes a typo or a
wrongly typed value fail before any work starts; :class:`ConfigError` names the key and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from hmrnn.config import Config, ConfigError, dotted_keys, suggest, validate
from hmrnn.registry import DATASETS, MODELS

GROUPS = ("experiment", "model", "data")


def conf_dir() -> Path:
    """The folder of the YAML files: ``$HMRNN_CONF`` or the repository's ``conf/``."""
    return Path(os.environ.get("HMRNN_CONF", Path(__file__).resolve().parents[1] / "conf"))


# the registry behind a group: a registered model or data set needs no YAML file of its own
REGISTRIES = {"model": MODELS, "data": DATASETS}


def choices(group: str) -> list[str]:
    """The names a group accepts: the registered models or data sets, the experiment files."""
    if group in REGISTRIES:
        return sorted(REGISTRIES[group].names())
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def load_group(group: str, name: str) -> DictConfig:
    """``conf/<group>/<name>.yaml`` (no values for a registered name without a file), or a
    ConfigError listing the available names."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file() and name in REGISTRIES.get(group, ()):
        return DictConfig({})
    if not path.is_file():
        options = choices(group)
        raise ConfigError(
            f"{group}={name!r} has no file {path}{suggest(name, options)}; "
            f"available: {', '.join(options) or '(none)'}"
        )
    try:
        loaded = OmegaConf.load(path)
    except Exception as error:  # a YAML syntax error, with its line
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return loaded


# ``model.name=x`` / ``data.name=x`` are the group choices ``model=x`` / ``data=x``: the name of a
# model or data set is the name of its file in conf/, never a value set over another file's
NAME_KEYS = {"model.name": "model", "data.name": "data"}


def split_arguments(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate group choices (``model=lstm``, or ``model.name=lstm``) from dotted overrides.

    A group chosen twice with different names is a ConfigError, so no choice is silently lost.
    """
    selected: dict[str, str] = {}
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"argument {arg!r} is not of the form key=value")
        group = NAME_KEYS.get(key, key)
        if group not in GROUPS:
            overrides.append(arg)
            continue
        if group in selected and selected[group] != value:
            raise ConfigError(
                f"{group} is chosen twice on the command line ({selected[group]!r} and "
                f"{value!r}); give {group}=<name> once"
            )
        selected[group] = value
    return selected, overrides


def _merge(base: DictConfig, *others: Any, where: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, *others)  # type: ignore[return-value]
    except OmegaConfBaseException as error:
        raise config_error(error, where) from error


def config_error(error: OmegaConfBaseException, where: str) -> ConfigError:
    """Turn an OmegaConf error into one sentence that names the key and the fix."""
    key = getattr(error, "full_key", None) or "?"
    if isinstance(error, ConfigKeyError):
        hint = suggest(key, dotted_keys())
        return ConfigError(f"unknown key {key!r} in {where}{hint}; see hmrnn/config.py")
    if isinstance(error, ValidationError):
        message = str(error).splitlines()[0]
        return ConfigError(f"bad value for {key!r} in {where}: {message}")
    return ConfigError(f"{where}: {str(error).splitlines()[0]}")


def no_name(values: Any, where: str, group: str) -> None:
    """A YAML file may not set ``name`` in the model or data section: the group choice would
    overwrite it (an experiment chooses with its ``defaults:`` block)."""
    if isinstance(values, DictConfig) and "name" in values:
        raise ConfigError(
            f"{where} sets {group}.name; choose the {group} with a defaults: block in an "
            f"experiment ({group}: <name>) or {group}=<name> on the command line"
        )


def compose(argv: list[str]) -> tuple[Config, DictConfig]:
    """The validated :class:`Config` and its OmegaConf form (for printing and saving)."""
    selected, overrides = split_arguments(argv)
    experiment = DictConfig({})
    if "experiment" in selected:
        experiment = load_group("experiment", selected["experiment"])
    defaults = experiment.pop("defaults", None) or {}
    for group in ("model", "data"):
        selected.setdefault(group, str(defaults.get(group, Config().__dict__[group].name)))
    unknown = set(defaults) - {"model", "data"}
    if unknown:
        raise ConfigError(
            f"the defaults block of experiment={selected['experiment']!r} may only "
            f"choose model and data, not {sorted(unknown)}"
        )

    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    for group in ("data", "model"):
        values = load_group(group, selected[group])
        no_name(values, f"{group}/{selected[group]}.yaml", group)
        cfg = _merge(cfg, {group: values}, where=f"{group}/{selected[group]}.yaml")
    for group in ("data", "model"):
        no_name(experiment.get(group), f"experiment/{selected.get('experiment')}.yaml", group)
    cfg = _merge(cfg, experiment, where=f"experiment/{selected.get('experiment')}.yaml")
    try:
        cli = OmegaConf.from_dotlist(overrides)
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse the command line {overrides}: {error}") from error
    cfg = _merge(cfg, cli, where="the command line")
    cfg.model.name = selected["model"]
    cfg.data.name = selected["data"]
    cfg.experiment = selected.get("experiment", cfg.experiment)
    try:
        config: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as error:
        raise config_error(error, "the configuration") from error
    return validate(config), cfg
