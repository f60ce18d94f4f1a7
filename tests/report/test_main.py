"""``python -m hmrnn.report``: a clear error without runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_report_of_a_folder_without_runs_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hmrnn.report", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no finished run" in result.stderr
