"""W&B's sweep engine (the ``sweeps`` package) and wandb's macro expansion, adapted to run
without a server: checking a sweep file, proposing runs, expanding the file's command as
``wandb agent`` does.

``sweeps`` imports pydantic and numpy, not the wandb SDK; the macro functions exist only in
wandb's SDK, so :func:`expand_command` imports it when first called.
"""

from __future__ import annotations

import math
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hmrnn.config import ConfigError
from hmrnn.io import atomic_write

# W&B settings keys the sweeps package 0.2 rejects although wandb accepts them
SERVER_ONLY_KEYS = ("run_cap",)


def engine() -> Any:
    """The ``sweeps`` package, imported on first use."""
    with warnings.catch_warnings():  # sweeps 0.2 under pydantic 2: a renamed-key warning
        warnings.simplefilter("ignore")
        import sweeps
    return sweeps


def load_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep file as a dict, checked against W&B's sweep schema; ConfigError if invalid."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"sweep file {path} is not valid YAML: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"sweep file {path} must hold a mapping (method, metric, parameters)")
    problems = schema_violations(config)
    if problems:
        raise ConfigError(f"sweep file {path} is not a valid W&B sweep: {'; '.join(problems)}")
    return config


def schema_violations(config: dict[str, Any]) -> list[str]:
    """W&B's own schema check (empty = valid), plus what this runner needs: a command list."""
    checked = {k: v for k, v in config.items() if k not in SERVER_ONLY_KEYS}
    problems = list(engine().schema_violations_from_proposed_config(checked))
    command = config.get("command")
    if command is not None and not (
        isinstance(command, list) and all(isinstance(c, str | int | float) for c in command)
    ):
        problems.append("command must be a list of strings (a YAML block list)")
    return problems


def grid_size(config: dict[str, Any]) -> int | None:
    """The cells of a grid sweep; None for another method or a parameter it cannot count."""
    if config.get("method") != "grid":
        return None
    specs = list(config.get("parameters", {}).values())
    if not all(isinstance(s, dict) and ("value" in s or "values" in s) for s in specs):
        return None
    return math.prod(len(s["values"]) if "values" in s else 1 for s in specs)


def engine_run(run: dict[str, Any]) -> Any:
    """One recorded run (an entry of sweep.json) as the engine's SweepRun."""
    sweeps = engine()
    state = {
        "finished": sweeps.RunState.finished,
        "failed": sweeps.RunState.failed,
        "stopped": sweeps.RunState.killed,
        "running": sweeps.RunState.running,
    }[run["state"]]
    # sweeps 0.2 under pydantic 2 drops summary_metrics=; the alias names work
    return sweeps.SweepRun(
        name=run["id"],
        config={k: {"value": v} for k, v in run["values"].items()},
        state=state,
        summaryMetrics=run.get("summary") or {},
        sampledHistory=run.get("history") or [],
    )


def propose(config: dict[str, Any], runs: list[dict[str, Any]], seed: int) -> dict[str, Any] | None:
    """The engine's next run after ``runs`` as ``{key: value}`` (None when a grid is done),
    the same for the same ``seed`` and runs."""
    n = len(runs)
    random.seed(seed * 100_003 + n)  # random search draws from `random`,
    np.random.seed((seed * 100_003 + n) % 2**32)  # bayes from numpy's global state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bayes GP's convergence warnings
        proposed = engine().next_run(config, [engine_run(r) for r in runs], validate=True)
    if proposed is None:
        return None
    return {k: _plain(v["value"]) for k, v in proposed.config.items()}


def _plain(value: Any) -> Any:
    """numpy scalars (the engine's suggestions) as Python values."""
    return value.item() if isinstance(value, np.generic) else value


def expand_command(
    config: dict[str, Any], values: dict[str, Any], run_id: str, folder: Path | None = None
) -> list[str]:
    """The command line ``wandb agent`` runs for one proposed run (``values``: key -> value).

    wandb's own functions fill the ``${envvar:...}`` macros and build every argument format;
    the rest follows wandb's agent: ``${interpreter}`` is ``python`` on PATH, ``${env}``
    ``/usr/bin/env``, ``${program}`` the file's program, ``${args_json_file}`` the path of a file
    in ``folder`` holding ``${args_json}`` (written here when the command uses it).
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils  # the wandb SDK: only here

    command = list(config.get("command") or sweep_utils.DEFAULT_SWEEP_COMMAND)
    command = sweep_utils.create_sweep_command(command)
    macros: dict[str, Any] = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in values.items()}}
    )
    macros["interpreter"] = ["python"]
    macros["program"] = [config.get("program", "")]
    json_file = (folder or Path(".")) / f"config-{run_id}.json"
    macros["args_json_file"] = [str(json_file)]
    if "${args_json_file}" in command:
        atomic_write(json_file, macros["args_json"][0])
    if sys.platform != "win32":
        macros["env"] = ["/usr/bin/env"]
    out: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            out += [str(x) for x in macros.get(chunk[2:-1]) or []]
        else:
            out.append(chunk)
    return out
