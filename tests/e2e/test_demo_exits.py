"""The demo cleans up whatever happens: its output pipe closed before Ctrl-C (`make demo | tee`),
run from a directory holding a folder named lkbridge/ (which must not shadow the package)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.demo.stack import lkbridge_command
from tests.conftest import ROOT
from tests.support.demo_proc import READY, TEST_ADDR, processes_mentioning, require_server_binary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

# The demo's own process, started like `lkbridge demo` with the working directory off sys.path
# (its child, the daemon, is where a lkbridge/ folder in the working directory used to bite).
LAUNCH = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from lkbridge.cli.main import main; " \
         f"sys.exit(main(['demo', '--headless', '--addr', {TEST_ADDR!r}]))"


def shadowing_cwd(tmp_path: Path) -> Path:
    cwd = tmp_path / "here"
    (cwd / "lkbridge").mkdir(parents=True)  # e.g. the parent directory of a clone
    return cwd


def test_commands_started_by_the_demo_ignore_a_lkbridge_folder(tmp_path: Path) -> None:
    out = subprocess.run(lkbridge_command("--version"), cwd=shadowing_cwd(tmp_path),
                         capture_output=True, text=True, check=False, timeout=60)
    assert (out.returncode, out.stdout) == (0, "lkbridge 0.1.0\n"), out.stderr


def test_closed_output_and_ctrl_c_still_stop_everything_and_remove_the_directory(
    tmp_path: Path,
) -> None:
    require_server_binary()
    err_path = tmp_path / "stderr.log"
    with err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-P", "-c", LAUNCH], cwd=shadowing_cwd(tmp_path),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    assert demo.stdout is not None
    directory: Path | None = None
    try:
        seen = []
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := READY.search(line):
                directory = Path(match["config"]).parent
                break
        assert directory is not None, "".join(seen) + err_path.read_text()
        assert directory.name.startswith("lkbridge-demo-")
        demo.stdout.close()  # the reader (tee) is gone
        demo.send_signal(signal.SIGINT)
        code = demo.wait(60)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
    stderr = err_path.read_text()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert not directory.exists()
    assert processes_mentioning(str(directory)) == []


def test_the_bare_command_is_what_was_shadowed(tmp_path: Path) -> None:
    """Why lkbridge_command uses -P: without it, an editable install loses to the folder."""
    bare = [sys.executable, "-m", "lkbridge", "--version"]
    out = subprocess.run(bare, cwd=shadowing_cwd(tmp_path), capture_output=True, text=True,
                         check=False, timeout=60, env={**os.environ, "PYTHONPATH": ""})
    editable = re.search(r"__editable__", " ".join(os.listdir(Path(sys.prefix) / "lib" /
                         f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages")))
    if not editable:
        pytest.skip("lkbridge is not an editable install here")
    assert out.returncode != 0 and "cannot import name '__version__'" in out.stderr
