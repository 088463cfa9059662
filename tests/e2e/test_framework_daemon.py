"""The daemon with the real-framework agent: `send --wait`, why a session restarted, and sends
that the agent never answers (it left, or its worker was SIGKILLed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
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


def agent_ready(m: Seen) -> bool:
    return bool(m.payload) and bool((m.json().get("agent") or {}).get("is_connected"))


async def send_cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`lkbridge send ARGS -c CONFIG` as users run it (off the event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "lkbridge", "send", "-c", str(config), *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.mark.conversation
async def test_send_wait_prints_the_answer_to_its_own_message_or_says_interrupted(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemon_factory: Callable[..., DaemonProcess],
) -> None:
    config = daemon_config(tmp_path, mqtt_broker.port,
                           session_toml("desk", livekit_server, framework_agent.agent_name),
                           base_topic="fwd1")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "fwd1/#")
    try:
        daemon_factory(config)
        await probe.wait_for("fwd1/desk/state", agent_ready, timeout=60)
        answered = await send_cli(config, "--wait", "desk", "what time is it?")
        assert (answered.returncode, answered.stdout) == (0, "You said: what time is it?\n"), (
            answered.stderr
        )
        # Two clients at once: the framework interrupts the first reply when the second text
        # arrives. The first client must not print the second one's answer.
        mark = probe.mark()
        slow = asyncio.ensure_future(
            send_cli(config, "--wait", "desk", "[think 5] a question it ponders"))
        await probe.wait_for("fwd1/desk/agent_state", lambda m: m.text == "thinking", timeout=20,
                             after=mark)
        fast = await send_cli(config, "--wait", "desk", "[instant] another client's question")
        first = await slow
        assert fast.returncode == 0 and fast.stdout == "You said: [instant] another client's question\n"
        assert first.returncode == 3, (first.stdout, first.stderr)
        assert first.stdout == ""
        assert first.stderr.startswith("lkbridge send: interrupted:")
        events = [m.json() for m in probe.seen("fwd1/desk/event")]
        assert [(e["event"], e["reason"]) for e in events] == [("unanswered", "interrupted")]
        silent = await send_cli(config, "--wait", "--timeout", "3", "desk", "[silent] hello?")
        assert silent.returncode == 4 and "unanswered" in silent.stderr, silent.stderr
    finally:
        probe.close()


async def test_an_agent_that_leaves_is_the_reason_in_the_retained_state(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemon_factory: Callable[..., DaemonProcess],
) -> None:
    sessions = session_toml("hall", livekit_server, framework_agent.agent_name) + session_toml(
        "porch", livekit_server, framework_agent.agent_name, restart_on_agent_leave=False)
    config = daemon_config(tmp_path, mqtt_broker.port, sessions, base_topic="fwd2")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "fwd2/#")
    try:
        daemon = daemon_factory(config)
        for session in ("hall", "porch"):
            await probe.wait_for(f"fwd2/{session}/state", agent_ready, timeout=60)
            probe.publish(f"fwd2/{session}/send", "[leave] please go")
        # Restarted (the default), and the retained state says why until the next start.
        restarted = await probe.wait_for(
            "fwd2/hall/state", lambda m: bool(m.payload) and m.json().get("retry_in") is not None,
            timeout=30)
        assert restarted.json()["end_reason"] == "agent_left"
        assert restarted.json()["last_restart"]["reason"] == "agent_left"
        again = await probe.wait_for("fwd2/hall/state", agent_ready, timeout=60,
                                     after=probe.seen().index(restarted))
        assert again.json()["end_reason"] is None and again.json()["restarts"] == 1
        assert again.json()["last_restart"]["reason"] == "agent_left"
        # Not restarted: it stays ended, saying why.
        ended = await probe.wait_for(
            "fwd2/porch/state",
            lambda m: bool(m.payload) and m.json().get("end_reason") == "agent_left"
            and m.json()["connection_state"] == "disconnected", timeout=30)
        assert ended.json()["wanted"] is False and ended.json()["restarts"] == 0
        retained = MqttProbe("127.0.0.1", mqtt_broker.port, "fwd2/porch/state")
        try:
            kept = await retained.wait_for("fwd2/porch/state", lambda m: m.retain, timeout=10)
            assert kept.json()["end_reason"] == "agent_left"
        finally:
            retained.close()
        assert daemon.stop() == 0
    finally:
        probe.close()


async def test_a_send_to_a_sigkilled_worker_gets_an_unanswered_event(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent_factory: Callable[..., FrameworkAgentProcess],
    daemon_factory: Callable[..., DaemonProcess],
) -> None:
    worker = framework_agent_factory()
    config = daemon_config(tmp_path, mqtt_broker.port,
                           session_toml("attic", livekit_server, worker.agent_name,
                                        reply_timeout=3),
                           base_topic="fwd3")
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, "fwd3/#")
    try:
        daemon_factory(config)
        await probe.wait_for("fwd3/attic/state", agent_ready, timeout=60)
        worker.kill()  # its agent still looks present for a while: the server drops it later
        mark = probe.mark()
        probe.publish("fwd3/bridge/request/session/send",
                      json.dumps({"session": "attic", "text": "anyone there?", "transaction": "k"}))
        answer = await probe.wait_for("fwd3/bridge/response/session/send",
                                      lambda m: m.json().get("transaction") == "k", after=mark)
        sent_id = answer.json()["data"]["id"]
        event = await probe.wait_for(
            "fwd3/attic/event", lambda m: m.json().get("id") == sent_id, after=mark, timeout=40)
        data: dict[str, Any] = event.json()
        assert data["event"] == "unanswered" and data["session"] == "attic"
        assert data["reason"] in {"timed_out", "ended"}, data
        assert not [m for m in probe.messages[mark:]
                    if m.topic == "fwd3/attic/message" and m.json()["type"] == "agent_transcript"]
    finally:
        probe.close()
