"""Run the daemon as users do: a subprocess started from a TOML file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from devstack.livekit_server import LiveKitServer


def session_toml(session_id: str, server: LiveKitServer, agent_name: str | None, **extra: object) -> str:
    lines = [f"[sessions.{session_id}]"]
    if agent_name:
        lines.append(f'agent_name = "{agent_name}"')
    for key, value in extra.items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{key} = {value}")
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        else:
            lines.append(f'{key} = "{value}"')
    lines += [
        f"[sessions.{session_id}.token]",
        'source = "minted"',
        f'url = "{server.url}"',
        f'api_key = "{server.api_key}"',
        'api_secret = { env = "LKB_TEST_API_SECRET" }',
    ]
    return "\n".join(lines) + "\n"


def daemon_config(
    tmp: Path, broker_port: int, sessions: str, *, base_topic: str = "lkbridge",
    extra: str = "",
) -> Path:
    text = textwrap.dedent(f"""\
        [mqtt]
        host = "127.0.0.1"
        port = {broker_port}
        base_topic = "{base_topic}"
        client_id = "lkbridge-test-{tmp.name[-12:]}"

        [state]
        directory = "{tmp / 'state'}"

        [log]
        level = "debug"
        format = "json"
        """) + extra + "\n" + sessions
    path = tmp / "config.toml"
    path.write_text(text)
    return path


class DaemonProcess:
    """`python -m lkbridge run -c FILE`, logs to a file; start, stop (SIGTERM), kill (SIGKILL)."""

    def __init__(
        self, config: Path, server: LiveKitServer, log_path: Path,
        env: dict[str, str] | None = None, prefix: list[str] | None = None,
    ) -> None:
        self.config = config
        self.prefix = prefix or []  # e.g. a private mount namespace (tests of a bad disk)
        self.log_path = log_path
        self.env = {**os.environ, "LKB_TEST_API_SECRET": server.api_secret, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "lkbridge", "run", "-c", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
        )
        log.close()

    def stop(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
