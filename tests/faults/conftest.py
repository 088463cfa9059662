"""Fixtures of the fault suite, and the fault ledger printed at the end of the run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from devstack.livekit_server import LiveKitServer
from tests.faults.helpers import LEDGER
from tests.support.daemon_proc import DaemonProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def daemons(
    tmp_path: Path, livekit_server: LiveKitServer, log_dir: Path
) -> Iterator[Callable[..., DaemonProcess]]:
    """Factory: `daemons(config, server=..., env=...)` starts the daemon; killed at teardown."""
    procs: list[DaemonProcess] = []

    def start(
        config: Path, *, server: LiveKitServer | None = None, env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> DaemonProcess:
        log_path = log_dir / f"daemon-{tmp_path.name}.log"
        proc = DaemonProcess(config, server or livekit_server, log_path, env=env, prefix=prefix)
        proc.start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.kill()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not LEDGER:
        return
    write = terminalreporter.write_line
    terminalreporter.section("fault ledger")
    write(f"{'fault':<40} {'injected':>8} {'survived':>8} {'lost':>5} {'duplicated':>10}")
    for name, line in LEDGER.items():
        write(
            f"{name:<40} {line.injected:>8} {line.survived:>8} {line.lost:>5}"
            f" {line.duplicated:>10}"
        )
        for note in line.notes:
            write(f"    {note}")
    folder = Path(os.environ.get("LKB_TEST_LOG_DIR", ROOT / "test-logs"))
    folder.mkdir(parents=True, exist_ok=True)
    summary = {name: asdict(line) for name, line in LEDGER.items()}
    (folder / "faults-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
