"""The MQTT bridge through the real daemon: HA wiring, retained/expired commands, v5, offline."""

from __future__ import annotations

import asyncio
import uuid
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

ONLINE = {"state": "online"}
OFFLINE = {"state": "offline"}


def is_json(expected: Any) -> Callable[[Seen], bool]:
    return lambda m: bool(m.payload) and m.json() == expected


def state_is(connection: str, agent_state: str | None = None) -> Callable[[Seen], bool]:
    def check(m: Seen) -> bool:
        if not m.payload:
            return False
        data = m.json()
        agent = data.get("agent") or {}
        return data.get("connection_state") == connection and (
            agent_state is None or agent.get("state") == agent_state
        )

    return check


@pytest.fixture
def names() -> tuple[str, str]:
    """A base topic and a discovery prefix of this test's own (the broker is shared)."""
    tag = uuid.uuid4().hex[:8]
    return f"bridge-{tag}", f"ha-{tag}"


def make_config(
    tmp_path: Path, broker: Mosquitto, server: LiveKitServer, names: tuple[str, str],
    sessions: dict[str, str | None], **session_options: Any,
) -> Path:  # fmt: skip
    base, prefix = names
    tables = "".join(
        session_toml(sid, server, agent_name, **session_options)
        for sid, agent_name in sessions.items()
    )
    extra = f'[homeassistant]\ndiscovery_prefix = "{prefix}"\n'
    return daemon_config(tmp_path, broker.port, tables, base_topic=base, extra=extra)


async def request(
    probe: MqttProbe, base: str, action: str, body: dict[str, Any], **publish: Any
) -> dict[str, Any]:
    txn = uuid.uuid4().hex[:8]
    mark = probe.mark()
    probe.publish(f"{base}/bridge/request/{action}", {**body, "transaction": txn}, **publish)
    reply = await probe.wait_for(
        f"{base}/bridge/response/{action}", lambda m: m.json().get("transaction") == txn, after=mark
    )
    return dict(reply.json())


@pytest.mark.conversation
async def test_home_assistant_entities_act_on_the_real_session(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemon_factory: Callable[[Path], DaemonProcess],
    names: tuple[str, str],
) -> None:  # fmt: skip
    """Discovery payloads are pressed like HA does: buttons start/end, notify and text send;
    the agent is the real LiveKit Agents framework."""
    base, prefix = names
    agent = framework_agent
    config = make_config(
        tmp_path, mqtt_broker, livekit_server, names, {"porch": agent.agent_name}, autostart=False
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#", f"{prefix}/#")
    try:
        daemon_factory(config)
        device_topic = f"{prefix}/device/{base}_porch/config"
        discovery = (await probe.wait_for(device_topic, lambda m: bool(m.payload))).json()
        bridge_device = await probe.wait_for(f"{prefix}/device/{base}_bridge/config")
        assert discovery["device"]["via_device"] in bridge_device.json()["device"]["identifiers"]
        cmps = discovery["components"]
        assert probe.seen(f"{base}/porch/connection_state")[-1].text == "disconnected"

        # "Start" button: HA publishes payload_press on the command topic.
        start = cmps["start"]
        probe.publish(start["command_topic"], start["payload_press"])
        await probe.wait_for(f"{base}/porch/state", state_is("connected", "listening"), timeout=30)

        # notify.send_message publishes the raw text on the notify entity's command topic.
        probe.publish(cmps["send"]["command_topic"], "hello from a notify action")
        await probe.wait_for(
            f"{base}/porch/message",
            lambda m: m.json()["final"]
            and m.json()["text"] == "You said: hello from a notify action", timeout=20,
        )
        probe.publish(cmps["text"]["command_topic"], "typed into the text box")
        event = await probe.wait_for(
            f"{base}/porch/message",
            lambda m: m.json()["final"] and m.json()["text"] == "You said: typed into the text box",
            timeout=20,
        )
        assert event.json()["type"] in cmps["message"]["event_types"]
        asked = [m.json() for m in probe.seen(f"{base}/porch/message")
                 if m.json()["type"] == "user_input"]
        assert [a["text"] for a in asked] == ["hello from a notify action",
                                              "typed into the text box"]
        assert event.json()["reply_to"] == asked[1]["id"]

        # "Last reply": only finished agent replies reach its topic, retained, so a client that
        # connects later (HA after a restart) gets the last one at once.
        last_topic = cmps["last_message"]["state_topic"]
        await probe.wait_for(last_topic, lambda m: m.json()["text"] == "You said: typed into the text box")
        carried = [m.json() for m in probe.seen(last_topic)]
        assert carried and all(m["type"] == "agent_transcript" and m["final"] for m in carried)
        later = MqttProbe("127.0.0.1", mqtt_broker.port, last_topic)
        try:
            retained = await later.wait_for(last_topic, timeout=5)
            assert retained.retain and retained.json()["text"] == "You said: typed into the text box"
        finally:
            later.close()

        # An empty notify message is a clear failed send of this session.
        mark = probe.mark()
        probe.publish(cmps["send"]["command_topic"], "")
        failed = await probe.wait_for(f"{base}/bridge/event", after=mark)
        assert failed.json() == {"event": "send_failed", "topic": cmps["send"]["command_topic"],
                                 "session": "porch", "error": "nothing to send: the text is empty"}  # fmt: skip

        # The enum sensor's state topic only ever carried one of its options.
        options = set(cmps["agent_state"]["options"])
        seen_states = {m.text for m in probe.seen(cmps["agent_state"]["state_topic"])}
        assert seen_states <= options and {"connecting", "listening"} <= seen_states

        # "End" button.
        end = cmps["end"]
        mark = probe.mark()
        probe.publish(end["command_topic"], end["payload_press"])
        await probe.wait_for(f"{base}/porch/connection_state", lambda m: m.text == "disconnected",
                             after=mark)  # fmt: skip

        # Home Assistant's birth message: everything (discovery included) is published again.
        mark = probe.mark()
        probe.publish(f"{prefix}/status", "online")
        again = await probe.wait_for(
            device_topic, lambda m: bool(m.payload), after=mark, timeout=10
        )
        assert again.json() == discovery
        await probe.wait_for(f"{base}/bridge/info", after=mark)
    finally:
        probe.close()


async def test_retained_commands_are_ignored_and_v5_requests_are_answered_with_correlation(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemon_factory: Callable[[Path], DaemonProcess], names: tuple[str, str],
) -> None:  # fmt: skip
    base, _ = names
    config = make_config(
        tmp_path, mqtt_broker, livekit_server, names, {"lab": None}, autostart=False
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    probe.publish(f"{base}/lab/command", "start", retain=True)  # a stale retained command
    try:
        daemon_factory(config)
        ignored = await probe.wait_for(
            f"{base}/bridge/event", lambda m: m.json().get("event") == "retained_ignored"
        )
        assert ignored.json()["topic"] == f"{base}/lab/command"
        await asyncio.sleep(1.0)
        assert not probe.seen(f"{base}/lab/state", state_is("connecting"))
        assert probe.seen(f"{base}/lab/connection_state")[-1].text == "disconnected"

        reply_topic = f"{base}/replies/health"  # response topics must lie under {base}/
        mark = probe.mark()
        probe.publish(f"{base}/bridge/request/health_check", b"{}", response_topic=reply_topic,
                      correlation=b"corr-1")  # fmt: skip
        direct = await probe.wait_for(reply_topic, after=mark)
        assert direct.correlation_data == b"corr-1"
        assert direct.json()["status"] == "ok"
        await probe.wait_for(f"{base}/bridge/response/health_check", after=mark)

        # A bad send payload is reported on bridge/event, naming the topic and the problem.
        mark = probe.mark()
        probe.publish(f"{base}/lab/send", b'{"text": 42}')
        bad = await probe.wait_for(f"{base}/bridge/event", after=mark)
        assert bad.json() == {
            "event": "bad_payload",
            "topic": f"{base}/lab/send",
            "error": "text: expected a string, got number",
        }
    finally:
        probe.publish(f"{base}/lab/command", b"", retain=True)
        probe.close()


async def test_sessions_added_and_removed_over_mqtt_appear_and_vanish(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemon_factory: Callable[[Path], DaemonProcess], names: tuple[str, str],
) -> None:  # fmt: skip
    base, prefix = names
    config = make_config(
        tmp_path, mqtt_broker, livekit_server, names, {"lab": None}, autostart=False
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#", f"{prefix}/#")
    try:
        template = session_toml("shed", livekit_server, None, autostart=False)
        config.write_text(config.read_text() + template.replace("[sessions.", "[templates."))
        daemon = daemon_factory(config)
        await probe.wait_for(f"{base}/bridge/state", is_json(ONLINE))
        added = await request(probe, base, "session/add", {"session": "shed", "template": "shed"})
        assert added["status"] == "ok", added
        await probe.wait_for(f"{prefix}/device/{base}_shed/config", lambda m: bool(m.payload))
        await probe.wait_for(f"{base}/shed/availability", lambda m: m.text == "online")
        await probe.wait_for(f"{base}/bridge/event", is_json({"event": "session_added",
                                                              "session": "shed"}))  # fmt: skip
        await probe.wait_for(f"{base}/bridge/info", lambda m: "shed" in m.json()["sessions"])

        refused = await request(probe, base, "session/remove", {"session": "lab"})
        assert "defined in the config file" in refused["error"]  # the operator's stays
        mark = probe.mark()
        removed = await request(probe, base, "session/remove", {"session": "shed"})
        assert removed["status"] == "ok", removed
        gone = await probe.wait_for(f"{prefix}/device/{base}_shed/config", after=mark)
        assert gone.payload == b""
        await probe.wait_for(f"{base}/shed/availability", lambda m: m.payload == b"", after=mark)
        await probe.wait_for(f"{base}/shed/state", lambda m: m.payload == b"", after=mark)
        # Gone from the daemon's config too: bridge/info no longer lists it (sessions nor
        # config), and a reload (HA's "Reload configuration" button) does not remove it again.
        info = await probe.wait_for(f"{base}/bridge/info", lambda m: "shed" not in
                                    m.json()["sessions"], after=mark)  # fmt: skip
        assert "shed" not in info.json()["config"]["sessions"]
        mark = probe.mark()
        reloaded = await request(probe, base, "config/reload", {})
        assert reloaded["status"] == "ok" and reloaded["data"]["removed"] == [], reloaded
        await probe.wait_for(f"{base}/bridge/info", after=mark)
        assert [m for m in probe.seen()[mark:] if m.topic.endswith(f"{base}_shed/config")] == []
        assert daemon.stop() == 0
    finally:
        probe.close()


async def test_clean_stop_and_kill_both_leave_the_bridge_offline(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemon_factory: Callable[[Path], DaemonProcess], names: tuple[str, str],
) -> None:  # fmt: skip
    base, _ = names
    config = make_config(
        tmp_path, mqtt_broker, livekit_server, names, {"lab": None}, autostart=False
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemon_factory(config)
        await probe.wait_for(f"{base}/bridge/state", is_json(ONLINE))
        await probe.wait_for(f"{base}/lab/availability", lambda m: m.text == "online")
        mark = probe.mark()
        assert daemon.stop() == 0
        await probe.wait_for(f"{base}/bridge/state", is_json(OFFLINE), after=mark)
        await probe.wait_for(f"{base}/lab/availability", lambda m: m.text == "offline", after=mark)

        daemon = daemon_factory(config)
        await probe.wait_for(f"{base}/bridge/state", is_json(ONLINE), after=mark)
        mark = probe.mark()
        daemon.kill()
        will = await probe.wait_for(f"{base}/bridge/state", after=mark, timeout=10)
        assert will.json() == OFFLINE
        # Retained: a client arriving later sees offline too.
        late = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/bridge/state")
        try:
            seen = await late.wait_for(f"{base}/bridge/state")
            assert seen.retain and seen.json() == OFFLINE
        finally:
            late.close()
    finally:
        probe.close()


async def test_an_expired_send_is_not_delivered_late(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[[Path], DaemonProcess],
    names: tuple[str, str],
) -> None:  # fmt: skip
    """Sends queued by the broker while the daemon is down: expired ones never reach the agent."""
    base, _ = names
    agent = await scripted_agent(echo=False)
    config = make_config(tmp_path, mqtt_broker, livekit_server, names, {"den": agent.agent_name})
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemon_factory(config)
        await probe.wait_for(f"{base}/den/state", state_is("connected", "listening"), timeout=20)
        daemon.kill()  # its persistent MQTT session keeps the subscriptions; the broker queues
        await probe.wait_for(f"{base}/bridge/state", is_json(OFFLINE), timeout=10)
        probe.publish(f"{base}/den/send", "stale: expires in 1 s", expiry=1)
        probe.publish(f"{base}/den/send", "fresh: expires in 120 s", expiry=120)
        await asyncio.sleep(2.5)
        daemon_factory(config)
        await agent.wait_for_job(20)  # the first run's
        job = await agent.wait_for_job(20)  # after the restart, in a fresh room
        chat = await asyncio.wait_for(job.chat.get(), 20)
        assert chat.text == "fresh: expires in 120 s"
        await asyncio.sleep(1.0)
        assert job.chat.empty(), "the expired send was delivered late"
        inputs = [m.json()["text"] for m in probe.seen(f"{base}/den/message")
                  if m.json()["type"] == "user_input"]  # fmt: skip
        assert "stale: expires in 1 s" not in inputs
    finally:
        probe.close()
