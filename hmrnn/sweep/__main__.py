"""``python -m hmrnn.sweep <sweep file> [options]``: the offline sweep runner's command line."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import hmrnn.sweep
from hmrnn.config import ConfigError
from hmrnn.sweep.runner import PROGRESS_EVERY, Runner


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hmrnn.sweep", description=(hmrnn.sweep.__doc__ or "").split("\n")[0]
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
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
