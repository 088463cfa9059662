"""The daemon as users run it: a subprocess from TOML, driven and observed only over MQTT."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.framework_agent import FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe, Seen

pytestmark = pytest.mark.e2e


def _state_is(connection: str, agent_state: str | None = None) -> Callable[[Seen], bool]:
    def check(m: Seen) -> bool:
        if not m.payload:
            return False
        data = m.json()
        if data.get("connection_state") != connection:
            return False
        return agent_state is None or (data.get("agent") or {}).get("state") == agent_state

    return check


async def _request(probe: MqttProbe, base: str, action: str, payload: Any, txn: str) -> dict[str, Any]:
    mark = probe.mark()
    body = payload if isinstance(payload, bytes | str) else json.dumps({**payload, "transaction": txn})
    probe.publish(f"{base}/bridge/request/{action}", body)
    reply = await probe.wait_for(
        f"{base}/bridge/response/{action}",
        lambda m: isinstance(payload, bytes | str) or m.json().get("transaction") == txn,
        after=mark,
    )
    return dict(reply.json())


@pytest.mark.conversation
async def test_send_reaches_the_agent_and_the_reply_streams_back_as_message_events(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemon_factory: Callable[..., DaemonProcess],
) -> None:
    agent = framework_agent  # the real LiveKit Agents framework
    config = daemon_config(tmp_path, mqtt_broker.port, session_toml("kitchen", livekit_server, agent.agent_name),
                           base_topic="e2e1")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e1/#")
    try:
        daemon_factory(config)
        await probe.wait_for("e2e1/bridge/state", lambda m: m.json() == {"state": "online"})
        await probe.wait_for("e2e1/kitchen/state", _state_is("connected", "listening"), timeout=30)
        probe.publish("e2e1/kitchen/send", "turn on the lights")
        final = await probe.wait_for(
            "e2e1/kitchen/message",
            lambda m: m.json()["type"] == "agent_transcript" and m.json()["final"],
        )
        assert final.json()["text"] == "You said: turn on the lights"
        updates = [m.json() for m in probe.seen("e2e1/kitchen/message")
                   if m.json()["id"] == final.json()["id"]]
        assert len(updates) > 2, "the agent's text arrives as it grows"
        texts = [u["text"] for u in updates]
        assert all(b.startswith(a) for a, b in itertools.pairwise(texts)), texts
        loopback = [m.json() for m in probe.seen("e2e1/kitchen/message") if m.json()["type"] == "user_input"]
        assert loopback and loopback[0]["text"] == "turn on the lights"
        assert loopback[0]["session"] == "kitchen"
        assert all(u["reply_to"] == loopback[0]["id"] for u in updates), "tied to its question"
        # The retained state and its scalar mirror followed the agent through its states
        # (the agent goes back to listening just after its reply stream closes).
        # (the state and the final text travel on different channels: either may come first)
        for _ in range(300):
            if probe.seen("e2e1/kitchen/agent_state")[-1].text == "listening":
                break
            await asyncio.sleep(0.05)
        agent_states = [m.text for m in probe.seen("e2e1/kitchen/agent_state")]
        # The framework sets `thinking` then `speaking` a few ms apart; the server may deliver
        # both attribute updates as one, so `thinking` is not always seen. `speaking` is.
        assert "speaking" in agent_states, agent_states
        replying = agent_states[agent_states.index("listening"):]
        assert set(replying) <= {"listening", "thinking", "speaking"}, agent_states
        assert agent_states[-1] == "listening"
        assert probe.seen("e2e1/kitchen/connection_state")[-1].text == "connected"
    finally:
        probe.close()


@pytest.mark.conversation
async def test_sigkill_mid_conversation_then_restart_restores_history_without_duplicates(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemon_factory: Callable[..., DaemonProcess],
) -> None:
    agent = framework_agent
    config = daemon_config(tmp_path, mqtt_broker.port, session_toml("den", livekit_server, agent.agent_name),
                           base_topic="e2e2")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e2/#")
    try:
        daemon = daemon_factory(config)
        await probe.wait_for("e2e2/den/state", _state_is("connected", "listening"), timeout=20)
        probe.publish("e2e2/den/send", "first question")
        await probe.wait_for("e2e2/den/message", lambda m: m.json()["type"] == "agent_transcript"
                             and m.json()["final"])
        probe.publish("e2e2/den/send", "[slow 0.1] second question that gets a longer answer")
        await probe.wait_for("e2e2/den/message", lambda m: m.json()["type"] == "agent_transcript"
                             and "second" in m.json()["text"])
        daemon.kill()  # mid-answer
        published: dict[str, dict[str, Any]] = {}
        for m in probe.seen("e2e2/den/message"):
            published[m.json()["id"]] = m.json()
        daemon2 = daemon_factory(config)
        reply = await _request(probe, "e2e2", "session/history", {"session": "den"}, "h1")
        assert reply["status"] == "ok", reply
        history = reply["data"]["messages"] if isinstance(reply["data"], dict) else reply["data"]
        ids = [m["id"] for m in history]
        assert len(ids) == len(set(ids)), "no duplicates"
        for msg_id, last in published.items():
            stored = next((m for m in history if m["id"] == msg_id), None)
            assert stored is not None, f"published message {msg_id} lost"
            assert len(stored["text"]) >= len(last["text"]), (stored, last)
        assert daemon2.stop() == 0
    finally:
        probe.close()


async def test_broker_restart_while_the_agent_talks_delivers_the_events_afterwards(
    tmp_path: Path, livekit_server: LiveKitServer, private_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[..., DaemonProcess],
) -> None:
    agent = await scripted_agent(chunk_size=2, chunk_delay=0.05)
    config = daemon_config(tmp_path, private_broker.port,
                           session_toml("hall", livekit_server, agent.agent_name), base_topic="e2e3")
    probe = MqttProbe("127.0.0.1", private_broker.port, "e2e3/#")
    daemon_factory(config)
    await probe.wait_for("e2e3/hall/state", _state_is("connected", "listening"), timeout=20)
    probe.close()
    private_broker.stop()
    job = agent.jobs[0]
    segment = await job.say("spoken while the broker was away", chunk_size=5)
    await job.set_state("listening")
    private_broker.start()  # same port
    probe = MqttProbe("127.0.0.1", private_broker.port, "e2e3/#")
    try:
        final = await probe.wait_for(
            "e2e3/hall/message", lambda m: m.json()["id"] == segment and m.json()["final"], timeout=30
        )
        assert final.json()["text"] == "spoken while the broker was away"
    finally:
        probe.close()


BAD_REQUESTS: list[tuple[str, str, bytes | str | dict[str, Any], str]] = [
    ("not-json", "session/start", b"{nope", "not valid JSON"),
    ("not-object", "session/start", b"[1,2]", "object"),
    ("bad-utf8", "session/send", b"\xff\xfe\xfa", "UTF-8"),
    ("unknown-session", "session/start", {"session": "nobody"}, "unknown session 'nobody'"),
    ("missing-session", "session/end", {}, "session"),
    ("wrong-type-text", "session/send", {"session": "lab", "text": 42}, "text"),
    ("unknown-action", "session/explode", {"session": "lab"}, "unknown action"),
    ("restore-bad-message", "session/restore", {"session": "lab", "messages": [{"id": "x"}]}, "messages[0]"),
    ("too-large", "session/send", {"session": "lab", "text": "x" * 70_000}, "too large"),
    ("add-free-form", "session/add", {"session": "new-one", "config": {"token": {"source": "nope"}}}, "no longer takes"),
]


async def test_bad_requests_each_get_a_clear_error_response(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    config = daemon_config(
        tmp_path, mqtt_broker.port,
        session_toml("lab", livekit_server, None, autostart=False), base_topic="e2e4",
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e4/#")
    try:
        daemon = daemon_factory(config)
        await probe.wait_for("e2e4/bridge/state", lambda m: m.json() == {"state": "online"})
        for name, action, payload, expected in BAD_REQUESTS:
            reply = await _request(probe, "e2e4", action, payload, name)
            assert reply["status"] == "error", (name, reply)
            assert expected.lower() in reply["error"].lower(), (name, reply)
            if isinstance(payload, dict):
                assert reply.get("transaction") == name
        health = await _request(probe, "e2e4", "health_check", {}, "alive")
        assert health["status"] == "ok"
        assert daemon.proc is not None and daemon.proc.poll() is None
        assert daemon.stop() == 0
    finally:
        probe.close()


async def test_mqtt_transport_in_the_daemon_shares_the_bridge_connection(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """A session with the `mqtt` receiver merges MQTT-borne transcripts into its history."""
    agent = await scripted_agent()
    sessions = session_toml(
        "porch", livekit_server, agent.agent_name,
        receivers=["chat", "transcription", "mqtt"], senders=["chat", "mqtt"],
    ) + (
        "[sessions.porch.transports.mqtt]\n"
        'subscribe_topic = "devices/doorbell/transcripts"\n'
        'publish_topic = "devices/doorbell/outbound"\n'
    )
    config = daemon_config(tmp_path, mqtt_broker.port, sessions, base_topic="e2e5")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e5/#", "devices/doorbell/#")
    try:
        daemon_factory(config)
        await probe.wait_for("e2e5/porch/state", _state_is("connected", "listening"), timeout=20)
        probe.publish("devices/doorbell/transcripts", {
            "id": "doorbell-1", "timestamp": "2026-01-01T00:00:00Z", "type": "user_transcript",
            "text": "someone rang", "final": True,
        })
        event = await probe.wait_for("e2e5/porch/message", lambda m: m.json()["id"] == "doorbell-1")
        assert event.json()["text"] == "someone rang" and event.json()["session"] == "porch"
        probe.publish("e2e5/porch/send", "who is it?")
        outbound = await probe.wait_for("devices/doorbell/outbound")
        assert outbound.json()["text"] == "who is it?"
    finally:
        probe.close()


async def test_text_sent_while_a_session_restarts_is_held_and_delivered(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """The agent leaves; while the daemon restarts the session in a fresh room, a send waits."""
    agent = await scripted_agent()
    config = daemon_config(tmp_path, mqtt_broker.port,
                           session_toml("attic", livekit_server, agent.agent_name), base_topic="e2e6")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e6/#")
    try:
        daemon_factory(config)
        await probe.wait_for("e2e6/attic/state", _state_is("connected", "listening"), timeout=20)
        first = agent.jobs[0]
        mark = probe.mark()
        await first.leave()
        # The session sees the agent leave and schedules a restart (state carries retry_in).
        await probe.wait_for("e2e6/attic/state", lambda m: "retry_in" in m.json(), after=mark,
                             timeout=20)
        probe.publish("e2e6/attic/send", "are you back?")
        second = await agent.wait_for_job(20)
        second = await agent.wait_for_job(20) if second is first else second
        chat = await asyncio.wait_for(second.chat.get(), 30)
        assert chat.text == "are you back?"
        assert second.room_name != first.room_name, "restarted in a fresh room"
        failures = [m for m in probe.seen("e2e6/bridge/event") if "send_failed" in m.text]
        assert not failures, failures
    finally:
        probe.close()


async def test_a_session_that_could_not_be_built_is_built_again_on_reload(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """Its secret file is missing at start: an error on MQTT; once it exists, reload fixes it."""
    agent = await scripted_agent()
    secret_file = tmp_path / "api-secret"
    sessions = session_toml("cellar", livekit_server, agent.agent_name).replace(
        'api_secret = { env = "LKB_TEST_API_SECRET" }', f'api_secret = {{ file = "{secret_file}" }}'
    )
    config = daemon_config(tmp_path, mqtt_broker.port, sessions, base_topic="e2e7")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "e2e7/#")
    try:
        daemon_factory(config)
        error = await probe.wait_for("e2e7/cellar/error", lambda m: bool(m.payload))
        assert "api_secret" in error.json()["message"] and str(secret_file) in error.json()["message"]
        secret_file.write_text(livekit_server.api_secret + "\n")
        reply = await _request(probe, "e2e7", "config/reload", {}, "r1")
        assert reply["status"] == "ok" and "cellar" in reply["data"]["changed"], reply
        await probe.wait_for("e2e7/cellar/state", _state_is("connected", "listening"), timeout=20)
        cleared = probe.seen("e2e7/cellar/error")[-1]
        assert cleared.payload == b"", "the stale error is cleared"
        assert secret_file.read_text().strip() not in probe.seen("e2e7/bridge/info")[-1].text
    finally:
        probe.close()
