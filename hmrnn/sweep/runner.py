"""The runner: propose, launch and record runs one at a time until the sweep holds ``count``
runs, resuming first the runs an interruption left unfinished."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from hmrnn.sweep import children, engine, hyperband, outcome
from hmrnn.sweep.progress import Watch, progress_text
from hmrnn.sweep.state import SweepState

POLL_SECONDS = 5.0  # how often Hyperband looks at the running run's log
PROGRESS_EVERY = 30.0  # default seconds between a run's progress lines


class Runner:
    """Propose, launch and record runs until the sweep holds ``count`` runs."""

    def __init__(
        self, source: Path, folder: Path | None, seed: int, progress_every: float = PROGRESS_EVERY
    ) -> None:
        self.source = source
        self.config = engine.load_sweep(source)
        name = self.config.get("name") or source.stem
        self.state = SweepState(folder or Path("runs") / "sweeps" / name, self.config, source)
        self.seed = seed
        self.metric = self.config.get("metric", {}).get("name", "")
        self.goal = self.config.get("metric", {}).get("goal", "")
        self.progress_every = progress_every
        self.stop_requested = False
        self.child: subprocess.Popen | None = None
        self.planned: int | None = None  # the runs this command ends with, when known

    # -- the sweep
    def run(self, count: int | None) -> None:
        """Resume the unfinished runs, then propose and run new ones until the sweep holds
        ``count`` (a grid: until it is complete), or a stop is requested."""
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
            run = self.add_run(values)
            self.announce(run, "started")
            self.finish(run, self.launch(run, run["command"]))

    def propose(self) -> dict[str, Any] | None:
        """The engine's next run (None when a grid is done), reproducible from ``seed``."""
        return engine.propose(self.config, self.state.runs, self.seed)

    def planned_runs(self, count: int | None) -> int | None:
        """The runs the sweep will hold when this command ends: ``count``, the grid's cells
        (whichever is smaller), never fewer than it holds; None when unknown."""
        known = [n for n in (count, engine.grid_size(self.config)) if n is not None]
        return max(min(known), len(self.state.runs)) if known else None

    def add_run(self, values: dict[str, Any]) -> dict[str, Any]:
        """A new run of ``values``, recorded as running before it starts."""
        run_id = uuid.uuid4().hex[:8]
        command = engine.expand_command(self.config, values, run_id, self.state.folder)
        run = {
            "id": run_id,
            "values": values,
            "command": command,
            "run_dir": str(children.run_dir_of(command, run_id)),
            "state": "running",
        }
        self.state.runs.append(run)
        self.state.save()
        return run

    def resume(self, run: dict[str, Any]) -> None:
        """Continue a run an interruption left unfinished (from its checkpoint if it has one)."""
        pid = run.get("pid")
        if pid and children.alive(pid):
            print(f"[sweep] {self.label(run)}: waiting for its process {pid} to end", flush=True)
        while pid and children.alive(pid):  # its process outlived the runner: let it end first
            time.sleep(POLL_SECONDS)
        how = children.continuation(run)
        if how is None:  # it had finished
            self.finish(run, 0)
            return
        command, what = how
        self.announce(run, what)
        self.finish(run, self.launch(run, command))

    def request_stop(self, signum: int, frame: Any) -> None:
        """First Ctrl-C / SIGTERM: stop the current run (it checkpoints) and the sweep."""
        self.stop_requested = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    # -- one run
    def environment(self, run_id: str) -> dict[str, str]:
        return children.environment(self.state.data["sweep_id"], run_id)

    def launch(self, run: dict[str, Any], command: list[str]) -> int:
        """Run one command to its end, stopping it early if Hyperband says so and printing its
        progress; the exit code. The run's ``wall_seconds`` adds the time it ran."""
        watch = Watch(started=time.time(), before=run.get("wall_seconds", 0.0))
        watch.last_line = watch.started
        self.child = children.start(command, self.environment(run["id"]), self.state.log_path(run))
        run["pid"] = self.child.pid
        self.state.save()
        try:
            return self.follow(run, watch)
        finally:
            self.child = None
            run["wall_seconds"] = watch.before + time.time() - watch.started

    def follow(self, run: dict[str, Any], watch: Watch) -> int:
        """Wait for the run's process to end, its exit code: a progress line is due every
        ``progress_every`` seconds, Hyperband looks every POLL_SECONDS."""
        assert self.child is not None
        poll = min(POLL_SECONDS, max(self.progress_every, 0.25))
        checked = watch.started
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

    def should_stop(self, run: dict[str, Any]) -> bool:
        """Hyperband (or the file's rule) over the histories so far says stop this run."""
        return hyperband.should_stop(self.config, self.state.runs, run)

    def finish(self, run: dict[str, Any], code: int) -> None:
        """Record how a run ended from its exit code and results.json, and say it."""
        run_dir = Path(run["run_dir"])
        run.pop("pid", None)  # its process has ended
        run["exit_code"] = code
        run["history"] = hyperband.read_history(run_dir, self.metric) if self.metric else []
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

    # -- what it prints
    def label(self, run: dict[str, Any]) -> str:
        """``run 2/6 <id>``: the run's place in the sweep, and its id."""
        return f"run {self.state.number(run)}/{self.planned or '?'} {run['id']}"

    def parameters(self, run: dict[str, Any]) -> str:
        """The run's swept values."""
        return outcome.parameters_text(run, outcome.swept_keys(self.config))

    def announce(self, run: dict[str, Any], what: str) -> None:
        """A run starts: its values, its folder and where its output goes (the full command
        is the log's first line)."""
        print(
            f"[sweep] {self.label(run)} {what}: {self.parameters(run) or '(no parameters)'} | "
            f"folder {run['run_dir']} | log {self.state.log_path(run)}",
            flush=True,
        )

    def show_progress(self, run: dict[str, Any], watch: Watch) -> None:
        """Print the run's progress line when ``progress_every`` seconds have passed since the
        last one, unless it says nothing new (then at most every QUIET_SECONDS)."""
        now = time.time()
        if not watch.due(now, self.progress_every):
            return
        shown, line = self.progress_line(run, watch, now)
        if watch.news(shown, now, self.progress_every):
            print(line, flush=True)

    def progress_line(
        self, run: dict[str, Any], watch: Watch, now: float
    ) -> tuple[tuple[Any, ...], str]:
        """(what the line says that can change, the line): step, metric, elapsed time, ETA."""
        run_dir = Path(run["run_dir"])
        shown, text = progress_text(run_dir, watch, now, self.metric, self.goal)
        return shown, f"[sweep] {self.label(run)}: {text}"

    def outcome_line(self, run: dict[str, Any]) -> str:
        head, log = f"[sweep] {self.label(run)}", self.state.log_path(run)
        return outcome.line(run, head, log, self.metric, self.goal)

    def table(self) -> str:
        """Every run of the sweep: name, swept values, status, best and test metric, wall."""
        keys = outcome.swept_keys(self.config)
        return outcome.table(self.state.runs, keys, self.metric, self.goal)
