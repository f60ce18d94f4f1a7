"""``python -m hmrnn.report <folder of runs | entity/project/sweep_id> [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import hmrnn.report
from hmrnn.config import ConfigError
from hmrnn.report.pages import write_report
from hmrnn.report.runs import RunRecord, local_runs, wandb_runs
from hmrnn.report.tables import markdown_table


def read_source(source: str, out: Path | None) -> tuple[list[RunRecord], Path]:
    """The runs of a folder or of a W&B sweep, and where their report goes by default."""
    folder = Path(source)
    if folder.is_dir():
        return local_runs(folder), out or folder / "report"
    if source.count("/") == 2 and not folder.exists():
        return wandb_runs(source), out or Path(f"report-{source.rsplit('/', 1)[-1]}")
    raise ConfigError(
        f"{source} is neither a folder of runs nor a W&B sweep path (entity/project/sweep_id)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hmrnn.report", description=(hmrnn.report.__doc__ or "").split("\n")[0]
    )
    parser.add_argument("source", help="a folder of runs, or a W&B sweep entity/project/sweep_id")
    parser.add_argument("--out", type=Path, default=None, help="folder to write the report into")
    args = parser.parse_args(argv)
    try:
        runs, out = read_source(args.source, args.out)
        result = write_report(runs, out, f"Report: {args.source}")
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(markdown_table(result["rows"]))
    print(f"\nwrote {', '.join(str(out / f) for f in result['files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
