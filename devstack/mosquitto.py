"""Run a real Mosquitto broker on a local port, with a throwaway config."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devstack.procs import free_port, kill_process, stop_process, wait_for_tcp


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, if installed."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )


@dataclass
class Mosquitto:
    """One mosquitto process listening on host:port, anonymous, in-memory (no persistence)."""

    log_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    binary: str | None = None
    # In its own session, a terminal's Ctrl-C does not reach it: its owner stops it in order.
    new_session: bool = False
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"mosquitto-{self.port}.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        binary = self.binary or find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        if not self.port:
            self.port = free_port(self.host)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        conf = self.log_dir / f"mosquitto-{self.port}.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} {self.host}",
                    "allow_anonymous true",
                    "persistence false",
                    "set_tcp_nodelay true",
                    "max_queued_messages 100000",
                    "max_inflight_messages 0",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    "",
                ]
            )
        )
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=self.new_session,
        )
        log.close()
        wait_for_tcp(self.host, self.port, timeout, self._proc, "mosquitto", self.log_path)

    def stop(self) -> None:
        if self._proc is not None:
            stop_process(self._proc)

    def kill(self) -> None:
        if self._proc is not None:
            kill_process(self._proc)

    def restart(self) -> None:
        self.stop()
        self.start()
