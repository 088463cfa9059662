"""Run `lkbridge demo --headless` and the CLI clients as subprocesses, as a newcomer would."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.livekit_server import ServerUnavailable, ensure_binary

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
TEST_ADDR = os.environ.get("LKB_TEST_ADDR", "127.0.0.1")
READY = re.compile(r"ready: config=(?P<config>\S+) mqtt=127\.0\.0\.1:(?P<port>\d+) "
                   r"base_topic=(?P<base>\S+) session=(?P<session>\S+)")


def require_server_binary() -> None:
    """The demo needs the built LiveKit server: a hard failure in CI, a skip elsewhere."""
    try:
        ensure_binary(build=IN_CI or os.environ.get("LKB_BUILD_SERVER") == "1")
    except ServerUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}", pytrace=False)
        pytest.skip(f"{exc} (run `make test` to build it)")


def lkbridge(*args: str, stdin: str | None = None, timeout: float = 60.0,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`lkbridge ARGS` as a subprocess (python -m lkbridge, from this checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "lkbridge", *args], input=stdin, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})}, check=False,
    )


def server_secret(directory: Path) -> str:
    """The demo's LiveKit API secret, read from the running server's environment (LIVEKIT_KEYS)."""
    for line in processes_mentioning(str(directory)):
        pid, cmdline = line.split(": ", 1)
        if "livekit-server" not in cmdline:
            continue
        environ = (Path("/proc") / pid / "environ").read_bytes().split(b"\0")
        for item in environ:
            if item.startswith(b"LIVEKIT_KEYS="):
                return item.split(b": ", 1)[1].decode()
    raise AssertionError(f"no running livekit-server for {directory}")


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention text (the demo's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if text in cmdline and "State:\tZ" not in status:
            found.append(f"{entry.name}: {cmdline}")
    return found


@dataclass
class Ready:
    config: str
    port: int
    base: str
    session: str


class DemoProcess:
    """`lkbridge demo --headless` with its stdout read line by line in a thread."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.stderr_path = directory.parent / f"{directory.name}-stderr.log"
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lkbridge", "demo", "--headless", "--addr", TEST_ADDR,
                 "--dir", str(directory), *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True,
            )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def diagnostics(self) -> str:
        logs = self.directory / "logs"
        tails = []
        for name in ("daemon.log", "demo.log", "livekit-server.log"):
            path = logs / name
            if path.exists():
                tails.append(f"--- {name} ---\n" + "\n".join(path.read_text().splitlines()[-15:]))
        stderr = self.stderr_path.read_text() if self.stderr_path.exists() else ""
        return f"--- stdout ---\n{self.output}\n--- stderr ---\n{stderr}\n" + "\n".join(tails)

    def wait_ready(self, timeout: float = 120.0) -> Ready:
        match = self.wait_for_line(READY, timeout)
        return Ready(match["config"], int(match["port"]), match["base"], match["session"])

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float = 30.0) -> re.Match[str]:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        for line in list(self.lines):
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            if match := regex.search(line):
                return match
        raise AssertionError(f"no line matching {regex.pattern!r}\n{self.diagnostics()}")

    def interrupt(self, timeout: float = 40.0) -> int:
        """Ctrl-C (SIGINT) and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)
