"""The two programs under test, run as users run them: lkbridge's daemon and the baseline script.

Both are subprocesses started from scratch on the shared servers, both send READY=1 to our
NOTIFY_SOCKET, and both use the same topic shape (`{base}/{id}/send`, `{base}/{id}/message`), so
every scenario drives them with the same code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.notify import NotifyListener
from bench.stack import MQTT_HOST, Stack

TARGETS = ("lkbridge", "baseline")
ROOT = Path(__file__).resolve().parent.parent
BASELINE_SCRIPT = ROOT / "bench" / "baseline.py"
SECRET_ENV = "LKB_BENCH_API_SECRET"


def session_ids(count: int) -> list[str]:
    return [f"s{i:02d}" for i in range(count)]


def daemon_config(stack: Stack, base: str, count: int, state_dir: Path) -> str:
    """A config as a user writes it: defaults everywhere (Home Assistant discovery on)."""
    text = textwrap.dedent(f"""\
        [mqtt]
        host = "{MQTT_HOST}"
        port = {stack.broker.port}
        base_topic = "{base}"
        client_id = "{base}"

        [state]
        directory = "{state_dir}"
        """)
    for sid in session_ids(count):
        text += textwrap.dedent(f"""
            [sessions.{sid}]
            agent_name = "{stack.agent.agent_name}"

            [sessions.{sid}.token]
            source = "minted"
            url = "{stack.server.url}"
            api_key = "{stack.server.api_key}"
            api_secret = {{ env = "{SECRET_ENV}" }}
            """)
    return text


@dataclass
class Launched:
    """One running target process."""

    name: str
    proc: subprocess.Popen[bytes]
    base: str
    sessions: list[str]
    started: float
    """time.perf_counter() just before fork/exec."""
    ready_after: float
    """Seconds from `started` to READY=1 arriving on the notify socket."""
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_topic(self, session_id: str) -> str:
        return f"{self.base}/{session_id}/send"

    def message_topic(self, session_id: str) -> str:
        return f"{self.base}/{session_id}/message"

    def alive(self) -> bool:
        return self.proc.poll() is None

    async def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; SIGKILL after timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)
            return None


def _spawn(
    cmd: list[str], env: dict[str, str], log_path: Path
) -> tuple[float, subprocess.Popen[bytes]]:
    """fork/exec now (a few ms, on purpose not in a thread: start-up is timed from here)."""
    with log_path.open("ab") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=ROOT,
        )
    return started, proc


async def launch(
    name: str, stack: Stack, count: int, work_dir: Path, notify: NotifyListener,
    *, ready_timeout: float = 60.0, profile: bool = False, state_root: Path | None = None,
) -> Launched:  # fmt: skip
    """Start target `name` with `count` sessions and wait for its READY=1.

    `state_root`: where lkbridge's state directory goes (the SD-card stand-in).
    With `profile`, it runs under pyinstrument (bench/profiled.py), which writes
    `profile.pyisession` in its run directory when it exits.
    """
    tag = uuid.uuid4().hex[:8]
    base = f"bench-{name}-{tag}"
    run_dir = work_dir / base
    run_dir.mkdir(parents=True)
    env = {**os.environ, "NOTIFY_SOCKET": notify.path}
    if name == "lkbridge":
        config = run_dir / "config.toml"
        state = (state_root / base) if state_root is not None else run_dir / "state"
        config.write_text(daemon_config(stack, base, count, state))
        env[SECRET_ENV] = stack.server.api_secret
        cmd = [sys.executable, "-m", "lkbridge", "run", "-c", str(config)]
    elif name == "baseline":
        env |= {
            "LIVEKIT_URL": stack.server.url,
            "LIVEKIT_API_KEY": stack.server.api_key,
            "LIVEKIT_API_SECRET": stack.server.api_secret,
        }
        cmd = [
            sys.executable, str(BASELINE_SCRIPT), "--host", MQTT_HOST,
            "--port", str(stack.broker.port), "--base", base,
            "--agent", stack.agent.agent_name, "--sessions", str(count),
        ]  # fmt: skip
    else:
        raise ValueError(f"unknown target {name!r}")
    if profile:
        cmd[1:1] = ["-m", "bench.profiled", str(run_dir / "profile.pyisession")]
    log_path = run_dir / "output.log"
    stack.drain_jobs()
    mark = notify.mark()
    started, proc = _spawn(cmd, env, log_path)
    try:
        ready_at = await asyncio.to_thread(
            notify.wait_for, "READY=1", after=mark, timeout=ready_timeout
        )
    except TimeoutError:
        proc.kill()
        proc.wait(10)
        raise RuntimeError(f"{name} sent no READY=1; see {log_path}") from None
    return Launched(name, proc, base, session_ids(count), started, ready_at - started, log_path)
