"""The Wyoming bridge in-process with a fake hub: ports, reloads, bounds, clean shutdown."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.handle import Handled
from wyoming.info import Describe, Info

from lkbridge.bridges.hub import DaemonNotice, HubEvent, HubEventKind, MessageEvent
from lkbridge.bridges.wyoming.bridge import WyomingBridge, WyomingBridgeError
from lkbridge.config.models import (
    Config,
    FrozenMap,
    MintedTokenConfig,
    SessionConfig,
    WyomingConfig,
)
from lkbridge.config.secrets import Secret
from lkbridge.messages import ReceivedMessage
from tests.support.fake_hub import FakeHub

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def session(session_id: str, **wyoming: Any) -> SessionConfig:
    token = MintedTokenConfig(url="ws://127.0.0.1:7880", api_key="k", api_secret=Secret.inline("s"))
    settings = WyomingConfig(**({"host": HOST} | wyoming)) if wyoming else None
    return SessionConfig(id=session_id, token=token, wyoming=settings)


def setup(*sessions: SessionConfig) -> tuple[FakeHub, Config]:
    hub = FakeHub(*(s.id for s in sessions))
    hub.configs = {s.id: s for s in sessions}
    return hub, Config(sessions=FrozenMap((s.id, s) for s in sessions))


async def describe(port: int) -> Info:
    async with AsyncTcpClient(HOST, port) as client:
        await client.write_event(Describe().event())
        event = await asyncio.wait_for(client.read_event(), 5)
    assert event is not None
    return Info.from_event(event)


async def test_a_taken_port_fails_the_bridge_at_start_naming_the_session() -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub, config = setup(session("kitchen", port=port))
        with pytest.raises(WyomingBridgeError, match=f"sessions.kitchen.wyoming: cannot listen on 127.0.0.1:{port}"):
            async with WyomingBridge(hub, config):  # type: ignore[arg-type]
                pass


async def test_servers_follow_the_config_after_a_reload() -> None:
    first, second, third = free_port(), free_port(), free_port()
    hub, config = setup(session("kitchen", port=first), session("porch"))
    async with WyomingBridge(hub, config) as bridge:  # type: ignore[arg-type]
        assert (await describe(first)).handle[0].name == "lkbridge kitchen"
        assert set(bridge.servers) == {"kitchen"}

        # Reload: kitchen moves to another port and gets a name; porch opts in.
        hub.configs["kitchen"] = session("kitchen", port=second, name="Kitchen")
        hub.configs["porch"] = session("porch", port=third)
        hub.emit(HubEvent(HubEventKind.BRIDGE, "", DaemonNotice("config_reloaded")))
        for _ in range(100):
            if set(bridge.servers) == {"kitchen", "porch"} and bridge.servers["kitchen"].address[1] == second:
                break
            await asyncio.sleep(0.02)
        assert (await describe(second)).handle[0].name == "Kitchen"
        assert (await describe(third)).handle[0].name == "lkbridge porch"
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, first)

        # Removed: its server closes. A port taken meanwhile is reported, not fatal.
        reported: list[dict[str, Any]] = []
        hub.observe(lambda e: reported.append(e.data.to_json())
                    if isinstance(e.data, DaemonNotice) else None)  # fmt: skip
        await hub.remove_session("porch")
        with socket.socket() as taken:
            taken.bind((HOST, 0))
            taken.listen()
            hub.configs["kitchen"] = session("kitchen", port=taken.getsockname()[1])
            hub.emit(HubEvent(HubEventKind.BRIDGE, "", DaemonNotice("config_reloaded")))
            for _ in range(100):
                if any(r.get("event") == "wyoming_failed" for r in reported):
                    break
                await asyncio.sleep(0.02)
        assert bridge.servers == {}
        failed = next(r for r in reported if r.get("event") == "wyoming_failed")
        assert failed["session"] == "kitchen" and "cannot listen" in failed["error"]


async def test_connections_are_bounded_and_idle_ones_closed() -> None:
    port = free_port()
    hub, config = setup(session("kitchen", port=port, max_connections=2, idle_timeout=0.3))
    async with WyomingBridge(hub, config) as bridge:  # type: ignore[arg-type]
        server = bridge.servers["kitchen"]
        held = [await asyncio.open_connection(HOST, port) for _ in range(2)]
        for _ in range(50):
            if server.connections == 2:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(HOST, port)
        refused = json.loads(await asyncio.wait_for(reader.readline(), 5))
        assert refused["type"] == "error"
        data = json.loads(await reader.readexactly(refused["data_length"]))
        assert data["text"] == "too many connections"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # Idle connections are closed after idle_timeout.
        for r, w in held:
            assert await asyncio.wait_for(r.read(), 5) == b""
            w.close()
        assert server.connections == 0


async def test_an_answer_through_the_fake_hub_and_a_clean_shutdown() -> None:
    port = free_port()
    hub, config = setup(session("kitchen", port=port, answer_timeout=5))
    hub.change("kitchen", connection_state="connected", wanted=True)
    async with WyomingBridge(hub, config) as bridge:  # type: ignore[arg-type]
        async with AsyncTcpClient(HOST, port) as client:
            await client.write_event(Transcript("hello", context={"conversation_id": "c"}).event())
            await asyncio.sleep(0.1)
            reply = {"id": "r1", "type": "agent_transcript", "text": "hi there", "final": True,
                     "reply_to": "generated", "timestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
            event = MessageEvent("kitchen", ReceivedMessage.from_dict(reply))
            hub.emit(HubEvent(HubEventKind.MESSAGE, "kitchen", event))
            event = await asyncio.wait_for(client.read_event(), 5)
        assert event is not None and Handled.from_event(event).text == "hi there"
        assert hub.calls[-1] == ("send", "kitchen", "hello", None)

        # A question still waiting when the daemon stops: its connection is closed, not leaked.
        waiting = AsyncTcpClient(HOST, port)
        await waiting.connect()
        await waiting.write_event(Transcript("anyone?").event())
        await asyncio.sleep(0.1)
        server = bridge.servers["kitchen"]
        assert server.connections == 1
    assert server.connections == 0
    assert await asyncio.wait_for(waiting.read_event(), 5) is None
    await waiting.disconnect()


def test_the_wyoming_package_is_imported_only_when_a_session_uses_it() -> None:
    """Daemons without a [wyoming] table pay nothing for the bridge (edge devices)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lkbridge.plugins.host import load_plugins\n"
        "from lkbridge.bridges.wyoming.bridge import WyomingBridge\n"
        "host = load_plugins(())\n"
        "assert 'wyoming' in host.bridges, host.bridges\n"
        "print('wyoming' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
