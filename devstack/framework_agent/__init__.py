"""Starts the real-framework test agent (worker.py) as a subprocess of its own venv's python."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "worker.py"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"
AGENT_VENV = Path(os.environ.get("LKB_AGENT_VENV", ROOT / ".venv-agent"))


class AgentUnavailable(RuntimeError):
    """The framework's venv is missing (run `make bootstrap`) or the worker did not register."""


def agent_python() -> Path:
    """The agent venv's interpreter; AgentUnavailable when bootstrap has not made it."""
    python = AGENT_VENV / "bin" / "python"
    if not python.exists():
        raise AgentUnavailable(
            f"{python} is missing: `make bootstrap` installs livekit-agents into {AGENT_VENV}"
        )
    return python


class FrameworkAgentProcess:
    """One worker of the LiveKit Agents framework, registered for explicit dispatch.

    `start()` returns once the server accepted the registration (the worker prints
    `REGISTERED <id>`). Credentials go through the environment, never the command line.
    """

    def __init__(
        self,
        *,
        url: str,
        api_key: str,
        api_secret: str,
        agent_name: str,
        log_path: Path,
        python: Path | None = None,
    ) -> None:
        self.url = url
        self.agent_name = agent_name
        self.log_path = log_path
        self.python = python
        self.worker_id: str | None = None
        self.proc: subprocess.Popen[str] | None = None
        self._env = {
            **os.environ,
            "LIVEKIT_URL": url,
            "LIVEKIT_API_KEY": api_key,
            "LIVEKIT_API_SECRET": api_secret,
            "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
            "PYTHONUNBUFFERED": "1",
        }
        for name in ("LIVEKIT_INFERENCE_URL", "LIVEKIT_OBSERVABILITY_URL", "LIVEKIT_REMOTE_EOT_URL"):
            self._env.pop(name, None)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 60.0) -> None:
        python = self.python or agent_python()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [str(python), str(WORKER), "--agent-name", self.agent_name, "--url", self.url],
                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                env=self._env, text=True, cwd=str(ROOT),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    self.kill()
                    raise AgentUnavailable(
                        f"the framework agent did not register within {timeout:g} s"
                        f" (see {self.log_path})"
                    )
                if sel.select(min(left, 0.5)):
                    line = self.proc.stdout.readline()
                    if line.startswith("REGISTERED "):
                        self.worker_id = line.split()[1]
                        return

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._close_pipe()

    def kill(self) -> None:
        """SIGKILL: the worker vanishes without a word, as a crashed device's would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
