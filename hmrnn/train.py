"""Train, validate and test a character language model.

    python -m hmrnn.train experiment=demo [model=lstm] [key=value ...]
    python -m hmrnn.train resume=runs/<run>            # continue a stopped run where it stopped

Each run gets a folder ``<out_dir>/<run_name>`` holding ``config.yaml`` (the resolved
configuration), ``checkpoints/`` (``best.ckpt``, ``last.ckpt``, ``previous.ckpt``; written
atomically, each with a sha256 digest checked on loading), ``csv/metrics.csv``, the W&B files
(``wandb/``, offline by default: ``wandb sync`` uploads them) and, at the end, ``results.json``.
The same command run again continues its run from the folder's checkpoint (a plain restart, a
SLURM requeue); a finished run or one of other settings is refused.

SIGTERM (cluster preemption), Ctrl-C (SIGINT) and SIGUSR1 save ``last.ckpt`` at the next batch end
where a resume is exact and exit with 143 / 130 / 138 (128 + the signal, as a shell reports it)
without testing; in a SLURM job SIGUSR1 also requeues it (``trainer.slurm_requeue``). A second
Ctrl-C stops at once (Lightning's interrupt handling, exit 1; the previous ``last.ckpt`` kept).
``docs/reliability.md`` lists every fault, what the program promises and its test. Under DDP a rank
that fails ends the job: the others fail at their next collective (at once when it crashed,
after ``trainer.ddp_timeout_s`` when it hangs) and rank 0 kills the ranks it launched.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, NoReturn

from hmrnn.config import ConfigError


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Run the command ``argv`` (default: ``sys.argv[1:]``): results.json's content, or None on
    the ranks other than 0 and for ``--help`` (answered without importing Lightning)."""
    argv = sys.argv[1:] if argv is None else argv
    from hmrnn.cli import print_help_if_asked

    if print_help_if_asked(argv, "hmrnn.train"):
        return None
    from hmrnn.run import job

    return job.main(argv)


def cli() -> None:
    """``python -m hmrnn.train``: a user's error is one sentence on stderr and exit status 2 (a
    setting) or 1 (a failed run)."""
    try:
        main()
    except ConfigError as error:
        fail(str(error), 2)
    except failed_run_errors() as error:
        fail(str(error), 1)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from hmrnn.run.job import RUN_DIR

        target = error.filename2 or error.filename  # a copy names its source, then its target
        where = f" while writing {target}" if target else ""
        fail(
            f"no space left on the device{where}; the run stopped and its last complete "
            f"checkpoint is intact: free space, then continue with "
            f"python -m hmrnn.train resume={RUN_DIR or '<run folder>'}",
            1,
        )


def failed_run_errors() -> tuple[type[BaseException], ...]:
    """The errors that end a run with one sentence (imported only once an error arrives)."""
    from hmrnn.lit.callbacks import NonFiniteError
    from hmrnn.lit.checkpoint_io import CheckpointWriteError

    return NonFiniteError, CheckpointWriteError


def fail(message: str, code: int) -> NoReturn:
    """Exit with ``error: <message>`` as the last thing on stderr.

    W&B's teardown at exit reports its own failures (on a full disk, pages of them, which would
    bury the one sentence that matters): logging is turned off first.
    """
    import logging

    logging.disable(logging.CRITICAL)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    cli()
