"""The LiveKit server is killed and comes back: sessions restart in fresh rooms, history intact.

The agent is the real LiveKit Agents framework (devstack/framework_agent)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack.framework_agent import FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.faults.helpers import (
    duplicates,
    message_events,
    request,
    state_is,
    tally,
)
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

SESSIONS = ("alpha", "beta")


def is_subsequence(wanted: list[str], seen: list[str]) -> bool:
    it = iter(seen)
    return all(any(step == s for s in it) for step in wanted)


async def converse(probe: MqttProbe, base: str, session: str, text: str) -> None:
    """Send text and wait for the agent's final answer to it."""
    mark = probe.mark()
    probe.publish(f"{base}/{session}/send", text)
    await probe.wait_for(
        f"{base}/{session}/message",
        lambda m: m.json()["type"] == "agent_transcript" and m.json()["final"]
        and m.json()["text"] == f"You said: {text}",
        after=mark, timeout=20,
    )


async def start_agent(server: LiveKitServer, agent_name: str, log_dir: Path) -> FrameworkAgentProcess:
    agent = FrameworkAgentProcess(
        url=server.url, api_key=server.api_key, api_secret=server.api_secret,
        agent_name=agent_name, log_path=log_dir / f"framework-agent-{agent_name}.log",
    )
    await asyncio.to_thread(agent.start)
    return agent


async def test_livekit_server_killed_and_restarted(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto, log_dir: Path,
    daemons: Callable[..., DaemonProcess],
) -> None:
    # A server of this test's own (the shared one must stay up), restarted on the same ports.
    server = LiveKitServer(
        addr=livekit_server.addr, log_dir=log_dir / f"livekit-fault-{uuid.uuid4().hex[:6]}",
        binary=livekit_server.binary,
    )
    server.start()
    base = f"fault-lk-{uuid.uuid4().hex[:6]}"
    agent_name = f"agent-{uuid.uuid4().hex[:8]}"
    agents = [await start_agent(server, agent_name, log_dir)]
    tables = "".join(session_toml(sid, server, agent_name) for sid in SESSIONS)
    config = daemon_config(tmp_path, mqtt_broker.port, tables, base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config, server=server)
        rooms_before: dict[str, str] = {}
        agents_before: dict[str, str] = {}
        for sid in SESSIONS:
            up = await probe.wait_for(
                f"{base}/{sid}/state", state_is("connected", "listening"), timeout=20
            )
            rooms_before[sid] = up.json()["room"]
            agents_before[sid] = up.json()["agent"]["identity"]
            await converse(probe, base, sid, f"before the crash, {sid}")
        history_before = {
            sid: (await request(probe, base, "session/history", {"session": sid}))["data"]["messages"]
            for sid in SESSIONS
        }

        mark = probe.mark()
        killed_at = time.monotonic()
        server.kill()
        for sid in SESSIONS:
            await probe.wait_for(
                f"{base}/{sid}/connection_state", lambda m: m.text == "disconnected",
                after=mark, timeout=60,
            )
        down_for = time.monotonic() - killed_at
        await asyncio.to_thread(server.start)
        # The old worker's connection died with the server: a fresh worker registers again.
        agents[0].kill()
        agents.append(await start_agent(server, agent_name, log_dir))

        for sid in SESSIONS:
            up = await probe.wait_for(
                f"{base}/{sid}/state", state_is("connected", "listening"), after=mark, timeout=60
            )
            assert up.json()["room"] != rooms_before[sid], "restarted in a fresh room"
            assert up.json()["agent"]["identity"] != agents_before[sid], "with a fresh agent"
            assert up.json()["restarts"] >= 1
            steps = [m.text for m in probe.messages[mark:]
                     if m.topic == f"{base}/{sid}/connection_state"]
            wanted = ["reconnecting", "disconnected", "connecting", "connected"]
            assert is_subsequence(wanted, steps), steps
            states = [m.json() for m in probe.messages[mark:]
                      if m.topic == f"{base}/{sid}/state" and m.payload]
            assert any("retry_in" in s for s in states), "the pending restart is on the state topic"
            reasons = [s["end_reason"] for s in states if "retry_in" in s]
            # The room went first. A restart while the server is still starting fails to
            # connect; one before the new worker registered times out waiting for the agent.
            assert reasons[0] in {"room_disconnected", "server_shutdown"}, reasons
            later = {"agent_join_timeout", "room_disconnected", "connect_failed"}
            assert set(reasons[1:]) <= later, reasons
            assert up.json()["end_reason"] is None
            assert up.json()["last_restart"]["reason"] in reasons

            history = (await request(probe, base, "session/history", {"session": sid}))["data"]
            ids = [m["id"] for m in history["messages"]]
            assert not duplicates(ids)
            assert history["messages"][: len(history_before[sid])] == history_before[sid]
            await converse(probe, base, sid, f"after the restart, {sid}")
        published = {e["id"] for sid in SESSIONS for e in message_events(probe, base, sid)}
        stored: list[str] = []
        for sid in SESSIONS:
            reply = await request(probe, base, "session/history", {"session": sid})
            stored += [m["id"] for m in reply["data"]["messages"]]
        alive = daemon.proc is not None and daemon.proc.poll() is None
        # The observer: every published message event must be in the stored history, once.
        outcome = tally("LiveKit server killed and restarted").record(
            injected=1, survived=int(alive), expected=published, seen=stored,
            note=f"{len(SESSIONS)} sessions: disconnected {down_for:.1f} s after the kill,"
            f" restarted in fresh rooms with a fresh agent; {len(published)} messages published",
        )
        assert outcome.lost == 0 and outcome.duplicated == 0, outcome
        assert alive
    finally:
        probe.close()
        for agent in agents:
            agent.stop()
        server.stop()
