"""Run a W&B sweep file with no W&B server: the offline sweep runner.

    python -m hmrnn.sweep sweeps/ptb_ablation_small.yaml [--count N] [--dir DIR] [--seed S]
                                                         [--progress-every SECONDS]

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

What it prints: when a run starts, its number (i/N), its swept values, its run folder and its log
(the training's own output, ``DIR/logs/<run id>.log``); while it runs, a line at most every
``--progress-every`` seconds (30) with the step and epoch read from its CSV log, the latest and
best value of the sweep's metric, the time so far and an ETA (when ``trainer.max_steps``, or
``max_epochs`` once an epoch has ended, gives the steps to go); when it ends, how (finished,
stopped by Hyperband, failed with its exit code and the last lines of its log) with its test
metric from results.json; at the end, a table of all the sweep's runs.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hmrnn.compose import compose
from hmrnn.config import ConfigError
from hmrnn.io import atomic_write
from hmrnn.report import read_csv_history
from hmrnn.run.folder import default_run_name

# W&B settings keys the sweeps package 0.2 rejects although wandb accepts them
SERVER_ONLY_KEYS = ("run_cap",)
TRAIN_MODULE = "hmrnn.train"
POLL_SECONDS = 5.0  # how often Hyperband looks at the running run's log
PROGRESS_EVERY = 30.0  # default seconds between a run's progress lines
QUIET_SECONDS = 300.0  # a progress line that says nothing new is repeated at most this often
LOG_TAIL_LINES = 15  # lines of a failed run's log shown


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


# ---------------------------------------------------------------------------- run progress
@dataclass
class Progress:
    """What a run's CSV log says so far (its training and validation rows)."""

    metric: str
    """The validation metric followed: the sweep's, else ``val/ll`` if logged, else ``val/bpc``."""
    step: int | None = None
    """Optimiser steps done (the CSV's step counts from 0); None before the first row."""
    epoch: int | None = None
    steps_per_epoch: int | None = None
    """Once epoch 0 has ended: its last logged step + 1 (exact when it validated at its end)."""
    latest: float | None = None
    best: float | None = None


def read_progress(run_dir: Path, metric: str = "", goal: str = "") -> Progress:
    """A run's progress from ``csv/metrics.csv``; ``goal`` (minimize / maximize) picks the best
    value, by default the larger log-likelihood or the smaller BPC."""
    rows = [
        row
        for row in read_csv_history(run_dir / "csv" / "metrics.csv")
        if "step" in row and any(k.startswith(("train/", "val/")) for k in row)
    ]
    if not metric:
        metric = "val/ll" if any("val/ll" in row for row in rows) else "val/bpc"
    progress = Progress(metric)
    if not rows:
        return progress
    progress.step = int(max(row["step"] for row in rows)) + 1
    progress.epoch = max((int(row["epoch"]) for row in rows if "epoch" in row), default=None)
    first_epoch = [row["step"] for row in rows if row.get("epoch") == 0]
    if progress.epoch and first_epoch:
        progress.steps_per_epoch = int(max(first_epoch)) + 1
    values = [row[metric] for row in rows if metric in row]
    if values:
        maximize = (goal or ("maximize" if metric.endswith("/ll") else "minimize")) == "maximize"
        progress.latest = values[-1]
        progress.best = max(values) if maximize else min(values)
    return progress


def planned_steps(run_dir: Path, progress: Progress) -> tuple[int | None, bool]:
    """The steps a run trains for, and whether that number is exact: ``trainer.max_steps`` of
    its ``config.yaml``, or ``max_epochs`` x the steps of an epoch once one has ended (an
    estimate); (None, False) while neither is known."""
    try:
        trainer = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]
        max_steps, max_epochs = int(trainer["max_steps"]), int(trainer["max_epochs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None, False
    by_epochs = None
    if max_epochs > 0 and progress.steps_per_epoch:
        by_epochs = max_epochs * progress.steps_per_epoch
    if max_steps > 0 and (by_epochs is None or max_steps <= by_epochs):
        return max_steps, True
    return by_epochs, False


@dataclass
class Watch:
    """One launch of a run, as its progress lines follow it (times from ``time.time()``)."""

    started: float
    before: float = 0.0
    """Seconds the run's earlier launches took (an interrupted run resumed)."""
    base: tuple[int, float] | None = None
    """(step, time) first seen in this launch's log: the ETA's rate counts from there."""
    last_line: float = 0.0
    last_shown: tuple[Any, ...] | None = None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last non-empty lines of a log (read from its last 64 KiB)."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 65_536))
        text = f.read().decode("utf-8", errors="replace")
    return [line for line in text.splitlines() if line.strip()][-lines:]


def duration(seconds: float | None) -> str:
    """``12s``, ``3m05s``, ``2h07m``; an en dash when unknown."""
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------------------- runner
class Runner:
    """Propose, launch and record runs until the sweep holds ``count`` runs."""

    def __init__(
        self, source: Path, folder: Path | None, seed: int, progress_every: float = PROGRESS_EVERY
    ) -> None:
        self.source = source
        self.config = load_sweep(source)
        name = self.config.get("name") or source.stem
        self.state = SweepState(folder or Path("runs") / "sweeps" / name, self.config, source)
        self.seed = seed
        self.metric = self.config.get("metric", {}).get("name", "")
        self.goal = self.config.get("metric", {}).get("goal", "")
        self.progress_every = progress_every
        self.stop_requested = False
        self.child: subprocess.Popen | None = None
        self.planned: int | None = None  # the runs this command ends with, when known

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

    def planned_runs(self, count: int | None) -> int | None:
        """The runs the sweep will hold when this command ends: ``count``, the grid's cells
        (whichever is smaller), never fewer than it holds; None when unknown."""
        grid = None
        if self.config.get("method") == "grid":
            specs = list(self.config.get("parameters", {}).values())
            if all(isinstance(s, dict) and ("value" in s or "values" in s) for s in specs):
                grid = math.prod(len(s["values"]) if "values" in s else 1 for s in specs)
        known = [n for n in (count, grid) if n is not None]
        return max(min(known), len(self.state.runs)) if known else None

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

    def log_path(self, run: dict[str, Any]) -> Path:
        """Where a run's training writes its output (every launch of it, appended)."""
        return self.state.folder / "logs" / f"{run['id']}.log"

    def launch(self, run: dict[str, Any], command: list[str]) -> int:
        """Run one command to its end, stopping it early if Hyperband says so and printing its
        progress; the exit code. The run's ``wall_seconds`` adds the time it ran."""
        log_path = self.log_path(run)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        watch = Watch(started=time.time(), before=run.get("wall_seconds", 0.0))
        watch.last_line = watch.started
        # a progress line due every progress_every s; Hyperband looks every POLL_SECONDS
        poll = min(POLL_SECONDS, max(self.progress_every, 0.25))
        with log_path.open("a") as log:
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
            checked = watch.started
            try:
                while True:
                    try:
                        return self.child.wait(timeout=poll)
                    except subprocess.TimeoutExpired:
                        pass
                    if time.time() - checked >= POLL_SECONDS:
                        checked = time.time()
                        stopping = self.stop_requested or run.get("early_terminated")
                        if not stopping and self.should_stop(run):
                            run["early_terminated"] = True
                            self.child.send_signal(signal.SIGTERM)  # saves a checkpoint, exits
                    self.show_progress(run, watch)
            finally:
                self.child = None
                run["wall_seconds"] = watch.before + time.time() - watch.started

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
        """Record how a run ended from its exit code and results.json, and say it."""
        run_dir = Path(run["run_dir"])
        run.pop("pid", None)  # its process has ended
        run["exit_code"] = code
        run["history"] = read_history(run_dir, self.metric) if self.metric else []
        results = run_dir / "results.json"
        if code == 0 and results.is_file():
            metrics = json.loads(results.read_text())["metrics"]
            run["summary"] = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
            run["state"] = "finished"
        elif run.get("early_terminated"):
            run["state"] = "stopped"
        elif self.stop_requested:  # interrupted: stays "running", resumed next time
            self.state.save()
            print(
                f"[sweep] {self.label(run)} interrupted (exit code {code}); run the same "
                "command again to continue it",
                flush=True,
            )
            return
        else:
            run["state"] = "failed"
        self.state.save()
        print(self.outcome_line(run), flush=True)

    def resume(self, run: dict[str, Any]) -> None:
        """Continue a run an interruption left unfinished (from its checkpoint if it has one)."""
        pid = run.get("pid")
        if pid and _alive(pid):
            print(f"[sweep] {self.label(run)}: waiting for its process {pid} to end", flush=True)
        while pid and _alive(pid):  # its process outlived the runner: let it end first
            time.sleep(POLL_SECONDS)
        run_dir = Path(run["run_dir"])
        if (run_dir / "results.json").is_file():
            self.finish(run, 0)
            return
        if (run_dir / "checkpoints" / "last.ckpt").is_file():
            command = ["python", "-m", TRAIN_MODULE, f"resume={run_dir}"]
            self.announce(run, "resumed from its checkpoint")
        else:
            command = run["command"]
            if run_dir.exists():  # started, but nothing saved worth keeping: start it over
                _remove_tree(run_dir)
            self.announce(run, "restarted (no checkpoint yet)")
        self.finish(run, self.launch(run, command))

    def run(self, count: int | None) -> None:
        self.planned = self.planned_runs(count)
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
            self.announce(run, "started")
            self.finish(run, self.launch(run, command))

    def request_stop(self, signum: int, frame: Any) -> None:
        """First Ctrl-C / SIGTERM: stop the current run (it checkpoints) and the sweep."""
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    # -- what it prints
    def label(self, run: dict[str, Any]) -> str:
        """``run 2/6 <id>``: the run's place in the sweep, and its id."""
        i = next(i for i, r in enumerate(self.state.runs, 1) if r["id"] == run["id"])
        return f"run {i}/{self.planned or '?'} {run['id']}"

    def swept_keys(self) -> list[str]:
        """The parameters that vary between runs (every one if none does)."""
        specs = self.config.get("parameters", {})
        swept = [
            k
            for k, s in specs.items()
            if not (isinstance(s, dict) and ("value" in s or len(s.get("values", [0, 0])) == 1))
        ]
        return swept or list(specs)

    def parameters(self, run: dict[str, Any]) -> str:
        values = run.get("values", {})
        return " ".join(f"{k}={_value_text(values[k])}" for k in self.swept_keys() if k in values)

    def announce(self, run: dict[str, Any], what: str) -> None:
        """A run starts: its values, its folder and where its output goes (the full command
        is the log's first line)."""
        print(
            f"[sweep] {self.label(run)} {what}: {self.parameters(run) or '(no parameters)'} | "
            f"folder {run['run_dir']} | log {self.log_path(run)}",
            flush=True,
        )

    def show_progress(self, run: dict[str, Any], watch: Watch) -> None:
        """Print the run's progress line when ``progress_every`` seconds have passed since the
        last one, unless it says nothing new (then at most every QUIET_SECONDS)."""
        now = time.time()
        since = now - watch.last_line
        if since < self.progress_every:
            return
        shown, line = self.progress_line(run, watch, now)
        if shown == watch.last_shown and since < max(self.progress_every, QUIET_SECONDS):
            return
        watch.last_line, watch.last_shown = now, shown
        print(line, flush=True)

    def progress_line(
        self, run: dict[str, Any], watch: Watch, now: float
    ) -> tuple[tuple[Any, ...], str]:
        """(what the line says that can change, the line): step, metric, elapsed time, ETA."""
        run_dir = Path(run["run_dir"])
        progress = read_progress(run_dir, self.metric, self.goal)
        head = f"[sweep] {self.label(run)}: "
        elapsed = f"{duration(watch.before + now - watch.started)} elapsed"
        if progress.step is None:
            return (), head + f"starting, no step logged yet, {elapsed}"
        total, exact = planned_steps(run_dir, progress)
        # the ETA's rate counts from this launch's first row: its config.yaml is written (and a
        # resumed run's log trimmed back to its checkpoint) when its training starts
        config_time = _mtime(run_dir / "config.yaml")
        if watch.base is None and config_time is not None and config_time >= watch.started - 1:
            watch.base = (progress.step, now)
        step = f"step {progress.step}"
        if total:
            step += f"/{total}" if exact else f"/~{total}"
        if progress.epoch is not None:
            step += f" (epoch {progress.epoch})"
        parts = [step]
        if progress.latest is not None:
            parts.append(f"{progress.metric} {progress.latest:.4f} (best {progress.best:.4f})")
        parts.append(elapsed)
        if total and progress.step >= total:
            parts.append("training done")  # its last validation and the test are left
        elif total and watch.base is not None and progress.step > watch.base[0]:
            rate = (progress.step - watch.base[0]) / max(now - watch.base[1], 1e-9)
            parts.append(f"ETA {duration((total - progress.step) / rate)}")
        return (progress.step, progress.latest), head + ", ".join(parts)

    def outcome(self, run: dict[str, Any]) -> tuple[str, float | None, float | None]:
        """(validation metric, its best value, the test value): results.json's where the run
        finished, else the best value in its CSV log."""
        run_dir = Path(run["run_dir"])
        results = _read_json(run_dir / "results.json")
        metric = self.metric or results.get("monitor", "")
        best = results.get("best_" + metric.replace("/", "_")) if metric else None
        if best is None:
            progress = read_progress(run_dir, metric, self.goal)
            metric, best = progress.metric, progress.best
        test = results.get("metrics", {}).get("test/" + metric.split("/", 1)[-1])
        return metric, best, test

    def outcome_line(self, run: dict[str, Any]) -> str:
        """How a run ended: its state, metrics and time; a failed one's exit code and log tail."""
        metric, best, test = self.outcome(run)
        head = f"[sweep] {self.label(run)}"
        took = duration(run.get("wall_seconds"))
        best_text = took if best is None else f"best {metric} {_number(best)}, {took}"
        if run["state"] == "finished":
            return f"{head} finished: test/{metric.split('/', 1)[-1]} {_number(test)}, {best_text}"
        step = read_progress(Path(run["run_dir"]), metric).step
        at = "before its first logged step" if step is None else f"at step {step}"
        if run["state"] == "stopped":
            return f"{head} stopped by Hyperband {at}: {best_text}"
        log = self.log_path(run)
        tail = "".join(f"\n[sweep]   | {line}" for line in log_tail(log))
        return (
            f"{head} failed with exit code {run.get('exit_code')} {at}, {best_text}; "
            f"the last lines of {log}:{tail}"
        )

    def status(self, run: dict[str, Any]) -> str:
        return {
            "finished": "finished",
            "stopped": "stopped (Hyperband)",
            "failed": f"failed (exit {run.get('exit_code')})",
            "running": "interrupted",
        }.get(run["state"], run["state"])

    def table(self) -> str:
        """Every run of the sweep: name, swept values, status, best validation and test metric,
        wall time."""
        rows = []
        metric = test_key = ""
        for run in self.state.runs:
            run_metric, best, test = self.outcome(run)
            metric = metric or run_metric
            test_key = "test/" + metric.split("/", 1)[-1]
            wall = run.get("wall_seconds")
            if wall is None:
                wall = _read_json(Path(run["run_dir"]) / "results.json").get("wall_seconds")
            name = Path(run["run_dir"]).name
            cells = [name, self.parameters(run), self.status(run), _number(best), _number(test)]
            rows.append([*cells, duration(wall)])
        header = ["run", "parameters", "status", f"best {metric}", test_key, "wall"]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        return "\n".join(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]
        )


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


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
    parser.add_argument(
        "--progress-every",
        type=float,
        default=PROGRESS_EVERY,
        metavar="SECONDS",
        help=f"seconds between a run's progress lines (default {PROGRESS_EVERY:.0f}; 0: at "
        "every newly logged step)",
    )
    args = parser.parse_args(argv)
    try:
        runner = Runner(args.file, args.dir, args.seed, args.progress_every)
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
    if states:
        print(runner.table(), flush=True)
    return 130 if runner.stop_requested else 0


if __name__ == "__main__":
    sys.exit(main())
