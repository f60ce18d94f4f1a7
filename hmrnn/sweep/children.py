"""The runs' processes: where ``hmrnn.train`` will write a run, the environment a sweep agent
gives it, starting it (its output into its log, its own session, ended with the runner) and
continuing one an interruption left unfinished."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hmrnn.compose import compose
from hmrnn.config import ConfigError
from hmrnn.run.names import default_run_name

TRAIN_MODULE = "hmrnn.train"


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


def environment(sweep_id: str, run_id: str) -> dict[str, str]:
    """This process's environment as ``wandb agent`` gives it to a run, W&B offline."""
    env = dict(os.environ)
    env["WANDB_MODE"] = "offline"
    env["WANDB_SWEEP_ID"] = sweep_id
    env["WANDB_RUN_ID"] = run_id
    env.pop("HMRNN_RUN_NAME", None)
    # `python` on PATH is this interpreter, as for an agent started in its virtualenv
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``command``, its output appended to ``log_path`` after a line naming it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        return subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            # its own session: a terminal's Ctrl-C reaches only the runner, which stops the
            # run with SIGTERM (checkpoint, exit 143), not with Lightning's SIGINT handling
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the runner dies (Linux), so that a killed runner does
    not leave a training behind that its resumption would race with."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, which has exited, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    return True


def continuation(run: dict[str, Any]) -> tuple[list[str], str] | None:
    """How a run an interruption left unfinished continues: (command, what to say). None when
    it has finished (results.json); from its checkpoint when it has one; else its command
    again, its folder (started, but nothing saved worth keeping) removed first."""
    run_dir = Path(run["run_dir"])
    if (run_dir / "results.json").is_file():
        return None
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return ["python", "-m", TRAIN_MODULE, f"resume={run_dir}"], "resumed from its checkpoint"
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return run["command"], "restarted (no checkpoint yet)"
