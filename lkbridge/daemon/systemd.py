"""systemd integration without dependencies: sd_notify messages and an event-loop watchdog."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from lkbridge.log import get_logger

__all__ = [
    "Watchdog",
    "notify",
    "ready",
    "reloading",
    "request_reload",
    "status",
    "stopping",
    "watchdog_interval",
    "watchdog_ping",
    "write_reload_verdict",
]

VERDICT_FILE = "reload-verdict.json"

_log = get_logger(__name__)


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send lines like "READY=1" to $NOTIFY_SOCKET as one datagram; False when not sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    elif not address.startswith("/"):
        return False  # unset (not under systemd) or a transport we do not speak (vsock)
    payload = "\n".join(line.replace("\n", " ") for line in lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(payload)
    except OSError as exc:
        _log.debug("sd_notify_failed", error=str(exc))
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """READY=1 (with an optional STATUS=)."""
    return notify("READY=1", *([f"STATUS={status_text}"] if status_text else []))


def status(text: str) -> bool:
    """STATUS=<text>: the one-line state shown by systemctl status."""
    return notify(f"STATUS={text}")


def stopping(status_text: str | None = None) -> bool:
    """STOPPING=1 (with an optional STATUS=)."""
    return notify("STOPPING=1", *([f"STATUS={status_text}"] if status_text else []))


def reloading() -> bool:
    """RELOADING=1 with the MONOTONIC_USEC that Type=notify-reload expects; send READY=1 after."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def _verdict_path(environ: Mapping[str, str] | None) -> Path | None:
    env = os.environ if environ is None else environ
    folder = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(folder) / VERDICT_FILE if folder else None


def write_reload_verdict(ok: bool, message: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """Leave the outcome of a reload in $RUNTIME_DIRECTORY for `lkbridge reload` to read."""
    path = _verdict_path(environ)
    if path is None:
        return False
    data = {"serial": time.monotonic_ns(), "ok": ok, "message": message[:2000]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError as exc:
        _log.warning("reload_verdict_not_written", error=str(exc))
        return False
    return True


def _read_verdict(path: Path) -> dict[str, object] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def request_reload(
    pid: int, *, timeout: float = 60.0, environ: Mapping[str, str] | None = None
) -> tuple[bool, str]:
    """SIGHUP the daemon and wait for its verdict: (ok, message). ExecReload runs this, so
    `systemctl reload` fails when the new config is refused. Without $RUNTIME_DIRECTORY (not
    under systemd) only the signal is sent."""
    if pid <= 0:
        # kill(0) and kill(-1) would signal a whole process group or every process we may reach
        return False, f"not a process id: {pid}"
    path = _verdict_path(environ)
    before = _read_verdict(path) if path is not None else None
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        return False, f"cannot signal process {pid}: {exc.strerror or exc}"
    if path is None:
        return True, "SIGHUP sent (no RUNTIME_DIRECTORY: the outcome is in the log)"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        verdict = _read_verdict(path)
        if verdict is not None and (before is None or verdict.get("serial") != before.get("serial")):
            return bool(verdict.get("ok")), str(verdict.get("message", ""))
        time.sleep(0.05)
    return False, f"no answer from process {pid} within {timeout:g} s"


def watchdog_ping() -> bool:
    """WATCHDOG=1."""
    return notify("WATCHDOG=1")


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WATCHDOG_USEC), or None when no watchdog is asked for."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2_000_000 if usec > 0 else None


class Watchdog:
    """Pings WATCHDOG=1 from an asyncio task, so pings stop whenever the event loop is stuck.

    A blocked loop cannot run the pinging task, so systemd notices and restarts the service.
    """

    def __init__(
        self,
        interval: float | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._environ = environ
        self.interval = interval if interval is not None else watchdog_interval(environ)
        self._task: asyncio.Task[None] | None = None
        self.pings = 0
        self.max_lag = 0.0

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    async def __aenter__(self) -> Watchdog:
        if self.interval is not None:
            self._task = asyncio.create_task(self._run(self.interval), name="systemd-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if notify("WATCHDOG=1", environ=self._environ):
                self.pings += 1
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            lag = loop.time() - expected
            self.max_lag = max(self.max_lag, lag)
            if lag > interval / 2:
                _log.warning("event_loop_lagged", lag_seconds=round(lag, 3))
