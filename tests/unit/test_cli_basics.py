"""The console script answers --version."""

from __future__ import annotations

import subprocess
import sys

import lkbridge


def test_version_flag_prints_the_package_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lkbridge", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"lkbridge {lkbridge.__version__}"
