"""An installed plugin whose sender hangs or raises: that session reports it, the others go on."""

from __future__ import annotations

import asyncio
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.faults.helpers import bridge_events, state_is, tally
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

SENDER_ERROR_WITHIN = 30.0
"""Seconds within which a send that hangs must have turned into a `sender` error."""

PLUGIN = '''
    """Transports that fail: `hang` never finishes a send, `boom` raises from every send."""

    import asyncio

    from lkbridge.hookspecs import hookimpl


    class Hang:
        async def send(self, message):
            await asyncio.Event().wait()


    class Boom:
        async def send(self, message):
            raise RuntimeError("boom: the faulty plugin refuses to send")


    @hookimpl
    def register_transports(register):
        register("hang", lambda ctx: Hang(), sender=True)
        register("boom", lambda ctx: Boom(), sender=True)
'''


def install_faulty_plugin(root: Path) -> Path:
    """A distribution `lkbridge-faulty` as pip would install it: module, dist-info, entry point."""
    root.mkdir()
    (root / "lkbridge_faulty.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "lkbridge_faulty-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lkbridge-faulty\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[lkbridge]\nfaulty = lkbridge_faulty\n")
    return root


async def test_a_hanging_or_raising_sender_is_a_sender_error_and_other_sessions_go_on(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemons: Callable[..., DaemonProcess],
) -> None:
    site = install_faulty_plugin(tmp_path / "site")
    agent = await scripted_agent()
    base = f"fault-plug-{uuid.uuid4().hex[:6]}"
    tables = (
        session_toml("hangs", livekit_server, agent.agent_name, senders=["hang"])
        + session_toml("booms", livekit_server, agent.agent_name, senders=["boom"])
        + session_toml("fine", livekit_server, agent.agent_name)
    )
    config = daemon_config(tmp_path, mqtt_broker.port, tables, base_topic=base)
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config, env={"PYTHONPATH": str(site)})
        info = await probe.wait_for(f"{base}/bridge/info")
        plugins = {p["name"]: p for p in info.json()["plugins"]}
        assert plugins["faulty"]["distribution"] == "lkbridge-faulty", plugins
        for sid in ("hangs", "booms", "fine"):
            await probe.wait_for(f"{base}/{sid}/state", state_is("connected", "listening"), timeout=20)

        sent_at = time.monotonic()
        probe.publish(f"{base}/hangs/send", "this send never finishes")
        probe.publish(f"{base}/booms/send", "this send blows up")

        # The raising sender: a sender error at once, and a send_failed event.
        error = await probe.wait_for(f"{base}/booms/error", lambda m: bool(m.payload), timeout=10)
        assert error.json()["kind"] == "sender" and "boom" in error.json()["message"]
        await probe.wait_for(
            f"{base}/bridge/event",
            lambda m: m.json().get("event") == "send_failed" and m.json().get("session") == "booms",
        )

        # Meanwhile another session talks as if nothing happened.
        probe.publish(f"{base}/fine/send", "are you still there?")
        reply = await probe.wait_for(
            f"{base}/fine/message",
            lambda m: m.json()["type"] == "agent_transcript" and m.json()["final"], timeout=15,
        )
        assert reply.json()["text"] == "You said: are you still there?"
        fine_state = probe.seen(f"{base}/fine/state")[-1].json()
        assert fine_state["error"] is None

        # The hanging sender: bounded, it becomes a sender error too.
        hang_error = await probe.wait_for(
            f"{base}/hangs/error", lambda m: bool(m.payload), timeout=SENDER_ERROR_WITHIN
        )
        took = time.monotonic() - sent_at
        assert hang_error.json()["kind"] == "sender", hang_error.json()
        # ...and the session takes commands again: an `end` queued behind the hung send runs.
        probe.publish(f"{base}/hangs/command", "end")
        await probe.wait_for(
            f"{base}/hangs/connection_state", lambda m: m.text == "disconnected", timeout=10
        )
        await probe.wait_for(
            f"{base}/bridge/event",
            lambda m: m.json().get("event") == "send_failed" and m.json().get("session") == "hangs",
            timeout=10,
        )
        failed = [e["session"] for e in bridge_events(probe, base, "send_failed")]
        alive = daemon.proc is not None and daemon.proc.poll() is None
        # Each faulty send is answered (send_failed once each); the healthy session's is not.
        outcome = tally("plugin sender hangs / raises").record(
            injected=2, survived=2 if alive else 0, expected=["booms", "hangs"],
            seen=[s for s in failed if s in ("booms", "hangs")],
            note=f"boom: sender error at once; hang: sender error after {took:.1f} s; the other"
            " session kept talking",
        )
        assert "fine" not in failed
        assert outcome.lost == 0 and outcome.duplicated == 0 and alive
    finally:
        probe.close()
        await asyncio.sleep(0)
