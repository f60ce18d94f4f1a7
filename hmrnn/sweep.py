"""Run a W&B sweep file with no W&B server: the offline sweep runner.

    python -m hmrnn.sweep sweeps/ptb_ablation_small.yaml [--count N] [--dir DIR] [--seed S]

The same file ``wandb sweep`` accepts: W&B's own sweep engine (the ``sweeps`` package) proposes
each run (grid, random or bayes, from the runs so far), each run is launched exactly as
``wandb agent`` would expand the file's ``command`` (wandb's own macro expansion, ``python``
being this interpreter), with ``WANDB_MODE=offline`` (``wandb sync`` uploads the runs later), and
Hyperband early termination is applied from the runs' CSV logs. One run at a time.

The sweep's state is ``DIR/sweep.json`` (default ``runs/sweeps/<file name>``), rewritten
atomically after every change, with one log per run in ``DIR/logs``. Started again after an
interruption it never repeats a finished run: an interrupted run continues from its last
checkpoint (``python -m hmrnn.train resume=<run folder>``) or, without one, starts over.
``--count N`` is the number of runs the sweep should hold when this command ends (finished,
failed or stopped ones included); a grid ends when every cell has run. Ctrl-C (or SIGTERM) stops
the current run, which saves a checkpoint, and leaves the sweep resumable.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hmrnn.compose import compose
from hmrnn.config import ConfigError
from hmrnn.io import atomic_write
from hmrnn.report import read_csv_history
from hmrnn.train import default_run_name

# W&B settings keys the sweeps package 0.2 rejects although wandb accepts them
SERVER_ONLY_KEYS = ("run_cap",)
TRAIN_MODULE = "hmrnn.train"
POLL_SECONDS = 5.0


# ------------------------------------------------------------------------- the sweep file
def _engine() -> Any:
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
    problems = list(_engine().schema_violations_from_proposed_config(checked))
    command = config.get("command")
    if command is not None and not (
        isinstance(command, list) and all(isinstance(c, str | int | float) for c in command)
    ):
        problems.append("command must be a list of strings (a YAML block list)")
    return problems


def expand_command(
    config: dict[str, Any], values: dict[str, Any], run_id: str, folder: Path | None = None
) -> list[str]:
    """The command line ``wandb agent`` runs for one proposed run (``values``: key -> value).

    wandb's own functions fill the ``${envvar:...}`` macros and build every argument format;
    the rest follows wandb's agent: ``${interpreter}`` is ``python`` on PATH, ``${env}``
    ``/usr/bin/env``, ``${program}`` the file's program, ``${args_json_file}`` the path of a file
    in ``folder`` holding ``${args_json}`` (written here when the command uses it).
    """
    from wandb.sdk.launch.sweeps import utils as sweep_utils

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


def train_arguments(command: list[str]) -> list[str] | None:
    """The ``key=value`` arguments after ``-m hmrnn.train`` in a command, or None."""
    for i in range(len(command) - 1):
        if command[i] == "-m" and command[i + 1] == TRAIN_MODULE:
            return command[i + 2 :]
    return None


def run_dir_of(command: list[str], run_id: str) -> Path:
    """The run folder ``hmrnn.train`` will use for this command in a sweep with ``run_id``."""
    argv = train_arguments(command)
    if argv is None:
        raise ConfigError(
            f"the sweep's command {' '.join(command)!r} does not run '-m {TRAIN_MODULE}'; the "
            "offline runner reads results from hmrnn.train's run folders"
        )
    config, _ = compose(argv)
    return Path(config.out_dir) / (config.run_name or default_run_name(config, run_id))


def _plain(value: Any) -> Any:
    """numpy scalars (the engine's suggestions) as Python values."""
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------- the state
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

    def save(self) -> None:
        atomic_write(self.path, json.dumps(self.data, indent=2))


# --------------------------------------------------------------------------- run outcome
def read_history(run_dir: Path, metric: str) -> list[dict[str, float]]:
    """The validation rows of a run's CSV log that hold ``metric``, in order."""
    rows = read_csv_history(run_dir / "csv" / "metrics.csv")
    return [{metric: row[metric], "_step": row.get("step", 0.0)} for row in rows if metric in row]


def engine_run(run: dict[str, Any]) -> Any:
    """One recorded run as the engine's SweepRun (its summary and history)."""
    sweeps = _engine()
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


# ------------------------------------------------------------------------------- runner
class Runner:
    """Propose, launch and record runs until the sweep holds ``count`` runs."""

    def __init__(self, source: Path, folder: Path | None, seed: int) -> None:
        self.source = source
        self.config = load_sweep(source)
        name = self.config.get("name") or source.stem
        self.state = SweepState(folder or Path("runs") / "sweeps" / name, self.config, source)
        self.seed = seed
        self.metric = self.config.get("metric", {}).get("name", "")
        self.stop_requested = False
        self.child: subprocess.Popen | None = None

    # -- proposing
    def propose(self) -> dict[str, Any] | None:
        """The engine's next run (None when a grid is done), reproducible from ``seed``."""
        n = len(self.state.runs)
        random.seed(self.seed * 100_003 + n)  # random search draws from `random`,
        np.random.seed((self.seed * 100_003 + n) % 2**32)  # bayes from numpy's global state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the bayes GP's convergence warnings
            proposed = _engine().next_run(
                self.config, [engine_run(r) for r in self.state.runs], validate=True
            )
        if proposed is None:
            return None
        return {k: _plain(v["value"]) for k, v in proposed.config.items()}

    # -- launching
    def environment(self, run_id: str) -> dict[str, str]:
        env = dict(os.environ)
        env["WANDB_MODE"] = "offline"
        env["WANDB_SWEEP_ID"] = self.state.data["sweep_id"]
        env["WANDB_RUN_ID"] = run_id
        env.pop("HMRNN_RUN_NAME", None)
        # `python` on PATH is this interpreter, as for an agent started in its virtualenv
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def launch(self, run: dict[str, Any], command: list[str]) -> int:
        """Run one command to its end, stopping it early if Hyperband says so; the exit code."""
        logs = self.state.folder / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with (logs / f"{run['id']}.log").open("a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            self.child = subprocess.Popen(
                command,
                env=self.environment(run["id"]),
                stdout=log,
                stderr=subprocess.STDOUT,
                # its own session: a terminal's Ctrl-C reaches only the runner, which stops the
                # run with SIGTERM (checkpoint, exit 143), not with Lightning's SIGINT handling
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
            run["pid"] = self.child.pid
            self.state.save()
            try:
                while self.child.poll() is None:
                    time.sleep(POLL_SECONDS)
                    if not self.stop_requested and self.should_stop(run):
                        run["early_terminated"] = True
                        self.child.send_signal(signal.SIGTERM)  # saves a checkpoint, exits
                return self.child.wait()
            finally:
                self.child = None

    def should_stop(self, run: dict[str, Any]) -> bool:
        """Hyperband (or the file's rule) over the histories so far says stop this run."""
        if "early_terminate" not in self.config or not self.metric:
            return False
        run["history"] = read_history(Path(run["run_dir"]), self.metric)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stop = _engine().stop_runs(self.config, [engine_run(r) for r in self.state.runs])
        return any(r.name == run["id"] for r in stop)

    def finish(self, run: dict[str, Any], code: int) -> None:
        """Record how a run ended from its exit code and results.json."""
        run_dir = Path(run["run_dir"])
        run.pop("pid", None)
        run["exit_code"] = code
        run["history"] = read_history(run_dir, self.metric) if self.metric else []
        results = run_dir / "results.json"
        if code == 0 and results.is_file():
            metrics = json.loads(results.read_text())["metrics"]
            run["summary"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            run["state"] = "finished"
        elif run.get("early_terminated"):
            run["state"] = "stopped"
        elif self.stop_requested:
            return  # interrupted: stays "running", resumed next time
        else:
            run["state"] = "failed"
        self.state.save()
        print(f"[sweep] run {run['id']} {run['state']} (exit code {code})", flush=True)

    def resume(self, run: dict[str, Any]) -> None:
        """Continue a run an interruption left unfinished (from its checkpoint if it has one)."""
        pid = run.get("pid")
        while pid and _alive(pid):  # its process outlived the runner: let it end first
            time.sleep(POLL_SECONDS)
        run_dir = Path(run["run_dir"])
        if (run_dir / "results.json").is_file():
            self.finish(run, 0)
            return
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            command = ["python", "-m", TRAIN_MODULE, f"resume={run_dir}"]
            print(f"[sweep] resuming run {run['id']} from {run_dir}", flush=True)
        else:
            command = run["command"]
            if run_dir.exists():  # started, but nothing saved worth keeping: start it over
                _remove_tree(run_dir)
            print(f"[sweep] restarting run {run['id']} (no checkpoint yet)", flush=True)
        self.finish(run, self.launch(run, command))

    def run(self, count: int | None) -> None:
        for run in self.state.runs:
            if self.stop_requested:
                return
            if run["state"] == "running":
                self.resume(run)
        while not self.stop_requested and (count is None or len(self.state.runs) < count):
            values = self.propose()
            if values is None:
                print("[sweep] the grid is complete", flush=True)
                return
            run_id = uuid.uuid4().hex[:8]
            command = expand_command(self.config, values, run_id, self.state.folder)
            run = {
                "id": run_id,
                "values": values,
                "command": command,
                "run_dir": str(run_dir_of(command, run_id)),
                "state": "running",
            }
            self.state.runs.append(run)
            self.state.save()
            print(f"[sweep] run {run_id}: {' '.join(command)}", flush=True)
            self.finish(run, self.launch(run, command))

    def request_stop(self, signum: int, frame: Any) -> None:
        """First Ctrl-C / SIGTERM: stop the current run (it checkpoints) and the sweep."""
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the runner dies (Linux), so that a killed runner does
    not leave a training behind that its resumption would race with."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return True


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmrnn.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("file", type=Path, help="a W&B sweep file, e.g. sweeps/ptb_ablation.yaml")
    parser.add_argument(
        "--count", type=int, default=None, help="runs the sweep should hold (default: the grid)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="the sweep's state folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of random and bayes proposals")
    args = parser.parse_args(argv)
    try:
        runner = Runner(args.file, args.dir, args.seed)
        if args.count is None and runner.config.get("method") != "grid":
            raise ConfigError(
                f"{args.file} is a {runner.config.get('method')} sweep: give --count N"
            )
        signal.signal(signal.SIGINT, runner.request_stop)
        signal.signal(signal.SIGTERM, runner.request_stop)
        runner.run(args.count)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    states = [r["state"] for r in runner.state.runs]
    print(
        f"[sweep] {runner.state.path}: {len(states)} runs, "
        + ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))),
        flush=True,
    )
    return 130 if runner.stop_requested else 0


if __name__ == "__main__":
    sys.exit(main())
