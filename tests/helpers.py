"""Waiting on subprocesses by their progress, never by a fixed number of seconds.

On a busy machine (another training on every core, a laptop in use) a run takes many times as
long as on a quiet one, so a total timeout fails tests that are only slow. These helpers wait
for an event (a file appearing, the process ending, an amount of its work done) for as long as
the process is alive and making progress: its stdout or stderr grows, a file under the folders
it writes changes, or it (or a process it started) uses CPU. A wait fails only when the process
ends without the event (its stderr in the message), or when nothing progressed for ``STALL_S``
seconds (``HMRNN_TEST_STALL_S``, default 600): hung, not slow. A stalled process is killed.

The processes get one intra-op thread (``OMP_NUM_THREADS=1`` unless set): torch's default, a
thread per core, assumes the cores are free; with another job on them its threads wait for each
other at every operation, and a tiny test run took 5.7 times as long (59 s against 18 s with
one thread, two busy loops on two cores; 10 s and 12 s on the quiet machine).

    result = run(cmd, watch=[out_dir])           # subprocess.run without a total timeout
    with Watched(cmd, watch=[out_dir]) as proc:  # subprocess.Popen, watched
        proc.wait_until(last.exists, "last.ckpt")
        proc.send_signal(signal.SIGTERM)
        proc.wait()
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hmrnn.sweep.children import alive  # the runner's own test of a live process

T = TypeVar("T")

STALL_S = float(os.environ.get("HMRNN_TEST_STALL_S", "600"))
POLL_S = 0.05  # how often a condition is checked
SAMPLE_S = 1.0  # how often progress is measured (it walks folders and /proc)
TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class Stalled(AssertionError):
    """The watched process made no progress at all for ``STALL_S`` seconds."""


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (any of its threads may have started them)."""
    pids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            pids += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


def cpu_seconds(pid: int) -> float:
    """CPU time used by ``pid`` and its descendants, live or reaped; 0.0 where /proc lacks it.

    A process's progress through its work, whatever the machine's load: the same run has used
    about the same CPU time at the same point of its work on a quiet machine and a busy one.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / TICK + sum(cpu_seconds(child) for child in children(pid))


def files_under(folders: Iterable[Path]) -> frozenset[tuple[str, int, int]]:
    """(path, size, mtime) of every file under ``folders``: it changes as a run writes."""
    seen = set()
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                try:
                    stat = os.stat(os.path.join(root, name))
                except OSError:  # renamed or removed while walking: a change too
                    continue
                seen.add((os.path.join(root, name), stat.st_size, stat.st_mtime_ns))
    return frozenset(seen)


class Progress:
    """When processes last made progress: their output (the open files ``outputs``) grew, the
    files under ``watch`` changed, or the processes ``pids()`` (with their descendants) used CPU
    time or ended."""

    def __init__(
        self,
        pids: Callable[[], Iterable[int]],
        watch: Iterable[Path] = (),
        outputs: Sequence[int] = (),
    ) -> None:
        self.pids, self.watch, self.outputs = pids, [Path(p) for p in watch], outputs
        self.last: Any = None
        self.changed = self.sampled = time.monotonic()

    def signature(self) -> Any:
        sizes = tuple(os.fstat(fd).st_size for fd in self.outputs)
        cpu = tuple((pid, cpu_seconds(pid)) for pid in self.pids())
        return sizes, files_under(self.watch), cpu

    def idle_s(self) -> float:
        """Seconds since anything progressed (measured at most every ``SAMPLE_S``)."""
        now = time.monotonic()
        if self.last is None or now - self.sampled >= SAMPLE_S:
            current = self.signature()
            if current != self.last:
                self.last, self.changed = current, now
            self.sampled = now
        return now - self.changed


def wait_until(
    condition: Callable[[], T],
    what: str,
    progress: Progress,
    running: Callable[[], bool],
    details: Callable[[], str] = str,
    on_stall: Callable[[], None] = lambda: None,
) -> T:
    """``condition()``'s first true value, checked while ``running()``; an AssertionError when
    the process stops running before it, ``Stalled`` after ``STALL_S`` s without progress."""
    while True:
        value = condition()
        if value:
            return value
        if not running():
            value = condition()  # it may have come true just before the end
            if value:
                return value
            raise AssertionError(f"the process ended before {what}:\n{details()}")
        idle = progress.idle_s()
        if idle > STALL_S:
            on_stall()
            raise Stalled(f"no progress for {idle:.0f} s while waiting for {what}:\n{details()}")
        time.sleep(POLL_S)


def wait_for_exit(pid: int, what: str, watch: Iterable[Path] = ()) -> None:
    """Wait until ``pid`` (not necessarily a child) has ended, while it makes progress."""
    wait_until(lambda: not alive(pid), what, Progress(lambda: [pid], watch), lambda: True)


class Watched:
    """A ``subprocess.Popen`` whose waits depend on its progress (see the module doc).

    Its stdout and stderr go to temporary files (a pipe nobody reads can fill up and block the
    process); it runs in a session of its own, so that ending the test (or a stall) kills it and
    every process it started (DDP ranks).
    """

    def __init__(
        self,
        cmd: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        watch: Iterable[Path] = (),
        text: bool = True,
    ) -> None:
        self.cmd, self.text = list(cmd), text
        env = dict(os.environ if env is None else env)
        env.setdefault("OMP_NUM_THREADS", "1")
        # closed by __exit__ (the process writes to them until it ends)
        self._out = tempfile.TemporaryFile()  # noqa: SIM115
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.cmd, env=env, stdout=self._out, stderr=self._err, start_new_session=True
        )
        self.pid = self.proc.pid
        outputs = (self._out.fileno(), self._err.fileno())
        self.progress = Progress(lambda: [self.pid], watch, outputs)

    # -- the process
    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def poll(self) -> int | None:
        return self.proc.poll()

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def kill_all(self) -> None:
        """SIGKILL the process and everything it started, then reap it."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait()

    # -- its output, so far
    def _read(self, fd: int) -> Any:
        data = os.pread(fd, os.fstat(fd).st_size, 0)  # pread: the writer's offset stays
        return data.decode(errors="replace") if self.text else data

    @property
    def stdout(self) -> Any:
        return self._read(self._out.fileno())

    @property
    def stderr(self) -> Any:
        return self._read(self._err.fileno())

    def details(self) -> str:
        err = self.stderr if self.text else self.stderr.decode(errors="replace")
        return f"{' '.join(self.cmd)}\nexit status {self.proc.poll()}, stderr:\n{err[-5000:]}"

    # -- waits
    def wait_until(self, condition: Callable[[], T], what: str) -> T:
        """``condition()``'s first true value; fails if the process ends before it, or stalls."""
        return wait_until(
            condition,
            what,
            self.progress,
            lambda: self.proc.poll() is None,
            self.details,
            self.kill_all,
        )

    def wait(self, what: str = "the process to end") -> int:
        """Its exit status, once it has ended (as long as it progresses)."""
        self.wait_until(lambda: self.proc.poll() is not None, what)
        return self.proc.returncode

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        self._out.close()
        self._err.close()


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    watch: Iterable[Path] = (),
    text: bool = True,
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True)`` with a stall watchdog, no total timeout."""
    with Watched(cmd, env=env, watch=watch, text=text) as proc:
        proc.wait(f"{' '.join(cmd)} to end")
        return subprocess.CompletedProcess(proc.cmd, proc.returncode, proc.stdout, proc.stderr)
