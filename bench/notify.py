"""A NOTIFY_SOCKET of our own: times a process's start to its READY=1, as systemd sees it."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path


class NotifyListener:
    """An AF_UNIX datagram socket that records every sd_notify line with its arrival time."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="lkb-notify-")
        self.path = str(Path(self._dir.name) / "notify.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self._sock.settimeout(0.2)
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.perf_counter()
            with self._cond:
                self._lines.extend((at, line) for line in data.decode(errors="replace").split("\n"))
                self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self._lines)

    def wait_for(self, line: str, *, after: int = 0, timeout: float = 30.0) -> float:
        """perf_counter time at which `line` arrived (from index `after` on); raises on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, seen in self._lines[after:]:
                    if seen == line:
                        return at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {line} on NOTIFY_SOCKET within {timeout:g} s")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._sock.close()
        self._thread.join(2)
        self._dir.cleanup()
