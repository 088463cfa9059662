"""The demo's parts, started in order and stopped in reverse: broker, server, agent, daemon."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from devstack.livekit_server import (
    LIVEKIT_SERVER_VERSION,
    LiveKitServer,
    ServerUnavailable,
    binary_path,
    ensure_binary,
)
from devstack.procs import log_tail

log = structlog.get_logger(__name__)

SECRET_ENV = "LKBRIDGE_DEMO_API_SECRET"
BROKER_HOST = "127.0.0.1"
BrokerChoice = Literal["auto", "mosquitto", "embedded"]
ProgressFn = Callable[[str, str], None]  # (part, what happened)


def lkbridge_command(*args: str) -> list[str]:
    """`python -P -m lkbridge ARGS` with this interpreter.

    -P: the working directory is not put on sys.path, so a folder named lkbridge/ there (a
    clone's parent directory, say) cannot shadow the installed package, editable or not.
    """
    return [sys.executable, "-P", "-m", "lkbridge", *args]


class DemoError(Exception):
    """A part of the demo stack could not be started; the message says which and why."""


@dataclass(frozen=True)
class StackSettings:
    directory: Path
    addr: str = "127.0.0.1"  # where the LiveKit server listens and what it advertises
    mqtt_port: int = 0  # 0: a free port
    base_topic: str = "lkbridge"
    broker: BrokerChoice = "auto"
    session: str = "demo"
    agent_name: str = "lkbridge-demo"


def demo_config(settings: StackSettings, mqtt_port: int, server_url: str, api_key: str) -> str:
    """The daemon's config: one session whose tokens are minted with the server's secret.

    The secret is referenced by environment variable, never written into the file.
    """
    q = json.dumps  # a JSON string is a valid TOML basic string
    state = settings.directory / "state"
    return "\n".join([
        "# Written by `lkbridge demo` for its local stack; removed when the demo stops.",
        "[mqtt]",
        f"host = {q(BROKER_HOST)}",
        f"port = {mqtt_port}",
        f"base_topic = {q(settings.base_topic)}",
        f"client_id = {q('lkbridge-demo-' + secrets.token_hex(3))}",
        "",
        "[state]",
        f"directory = {q(str(state))}",
        "",
        "[log]",
        'level = "info"',
        'format = "json"',
        "",
        f"[sessions.{settings.session}]",
        f"agent_name = {q(settings.agent_name)}",
        "",
        f"[sessions.{settings.session}.token]",
        'source = "minted"',
        f"url = {q(server_url)}",
        f"api_key = {q(api_key)}",
        f'api_secret = {{ env = "{SECRET_ENV}" }}',
        "",
    ])


class DemoStack:
    """`async with DemoStack(settings) as stack: await stack.start()`; leaving stops it all."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.config_path = settings.directory / "config.toml"
        self.log_dir = settings.directory / "logs"
        self.mqtt_port = settings.mqtt_port
        self.broker_kind = ""
        self.server_url = ""
        self.daemon: subprocess.Popen[bytes] | None = None
        self._exit = AsyncExitStack()

    @property
    def daemon_log(self) -> Path:
        return self.log_dir / "daemon.log"

    async def __aenter__(self) -> DemoStack:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    async def start(self, progress: ProgressFn, stop: asyncio.Event) -> bool:
        """Start every part in order; False when stop was set before the last one started.

        Steps are not cancelled half-way (a process being started would be missed by the
        teardown); stop is checked between them.
        """
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await self._start_broker(progress)
        if stop.is_set():
            return False
        server = await self._start_server(progress)
        if stop.is_set():
            return False
        await self._start_agent(server, progress)
        if stop.is_set():
            return False
        self._write_config(server)
        self._start_daemon(server.api_secret)
        progress("daemon", f"pid {self.daemon.pid if self.daemon else '?'}, log {self.daemon_log}")
        return True

    async def _start_server(self, progress: ProgressFn) -> LiveKitServer:
        if not binary_path().exists():
            progress("LiveKit server", f"building {LIVEKIT_SERVER_VERSION} once with Go "
                     "(a few minutes; cached in ~/.cache/lkbridge)")
        try:
            binary = await asyncio.to_thread(ensure_binary)
        except ServerUnavailable as exc:
            raise DemoError(str(exc)) from exc
        server = LiveKitServer(addr=self.settings.addr, log_dir=self.log_dir, binary=binary,
                               new_session=True)
        self._exit.push_async_callback(asyncio.to_thread, server.stop)
        try:
            await asyncio.to_thread(server.start)
        except (RuntimeError, OSError) as exc:
            raise DemoError(f"the LiveKit server did not start: {exc}") from exc
        self.server_url = server.url
        progress("LiveKit server", f"{server.url} ({LIVEKIT_SERVER_VERSION}, a random API secret)")
        return server

    async def _start_broker(self, progress: ProgressFn) -> None:
        from devstack.mosquitto import Mosquitto, find_mosquitto

        choice = self.settings.broker
        mosquitto = find_mosquitto()
        if choice == "mosquitto" and mosquitto is None:
            raise DemoError("mosquitto is not installed (Debian: apt-get install mosquitto)")
        if choice != "embedded" and mosquitto is not None:
            broker = Mosquitto(log_dir=self.log_dir, host=BROKER_HOST, port=self.mqtt_port,
                               new_session=True)
            self._exit.push_async_callback(asyncio.to_thread, broker.stop)
            try:
                await asyncio.to_thread(broker.start)
            except RuntimeError as exc:
                raise DemoError(f"mosquitto did not start: {exc}") from exc
            self.mqtt_port, self.broker_kind = broker.port, "mosquitto"
        else:
            from devstack.broker import EmbeddedBroker

            try:
                embedded = await self._exit.enter_async_context(
                    EmbeddedBroker(BROKER_HOST, self.mqtt_port))
            except OSError as exc:
                raise DemoError(f"the embedded broker cannot listen: {exc}") from exc
            self.mqtt_port = embedded.port
            why = "" if choice == "embedded" else ": mosquitto is not installed"
            self.broker_kind = f"embedded Python broker{why}"
        progress("MQTT broker", f"{BROKER_HOST}:{self.mqtt_port} ({self.broker_kind})")

    async def _start_agent(self, server: LiveKitServer, progress: ProgressFn) -> None:
        from devstack.agent import ScriptedAgent
        from devstack.demo.replies import demo_reply

        agent = ScriptedAgent(
            server.url, server.api_key, server.api_secret, self.settings.agent_name,
            reply=demo_reply, chunk_size=6, chunk_delay=0.04,
        )
        self._exit.push_async_callback(agent.aclose)
        try:
            await agent.start()
        except (OSError, TimeoutError) as exc:
            raise DemoError(f"the demo agent could not register with the server: {exc}") from exc
        progress("agent", f"{self.settings.agent_name!r}, dispatched into each new room")

    def _write_config(self, server: LiveKitServer) -> None:
        from lkbridge.config.files import load_config

        text = demo_config(self.settings, self.mqtt_port, server.url, server.api_key)
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        load_config(self.config_path)  # fails loudly here rather than in the daemon

    def _start_daemon(self, api_secret: str) -> None:
        env = {**os.environ, SECRET_ENV: api_secret}
        with self.daemon_log.open("ab") as out:
            self.daemon = subprocess.Popen(
                lkbridge_command("run", "-c", str(self.config_path)),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=self.settings.directory,
                start_new_session=True,  # the terminal's Ctrl-C reaches us; we stop it in order
            )
        self._exit.push_async_callback(self._stop_daemon)

    def daemon_failure(self) -> str | None:
        """Why the daemon is gone, or None while it runs."""
        if self.daemon is None or self.daemon.poll() is None:
            return None
        return f"the daemon exited with code {self.daemon.returncode}{log_tail(self.daemon_log)}"

    async def _stop_daemon(self, timeout: float = 15.0) -> None:
        proc = self.daemon
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # it ends the session and publishes offline
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            log.warning("demo_daemon_killed", timeout=timeout)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.to_thread(proc.wait, 5)

