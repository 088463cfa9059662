"""Counting a process's fsync/fdatasync calls with strace (attached to every thread)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


class FsyncCounter:
    """`strace -e trace=fsync,fdatasync` on every thread of `pid`, from start() to stop().

    strace slows each traced call a little, so latency is never measured while it counts.
    """

    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("strace") is not None

    def start(self) -> None:
        tids = sorted(os.listdir(f"/proc/{self.pid}/task"))
        cmd = ["strace", "-qq", "-f", "-e", "trace=fsync,fdatasync", "-o", str(self.out)]
        for tid in tids:
            cmd += ["-p", tid]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached to every thread

    def stop(self) -> int:
        """Detach and return how many fsync/fdatasync calls were made meanwhile."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGINT)
            self._proc.wait(20)
        lines = self.out.read_text(errors="replace").splitlines() if self.out.exists() else []
        return sum(1 for line in lines if "fsync(" in line or "fdatasync(" in line)
