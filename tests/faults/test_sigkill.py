"""The daemon is SIGKILLed at random points of a conversation, 20 times, and started again."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.framework_agent import FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from lkbridge.daemon.store import DATABASE_NAME
from tests.faults.helpers import (
    Publisher,
    duplicates,
    eventually,
    integrity_check,
    message_events,
    request,
    state_is,
    tally,
)
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

ONLINE = b'{"state":"online"}'

KILLS = 20
SEED = int(os.environ.get("LKB_FAULT_SEED", "0")) or random.randrange(1, 2**31)


def check_history(history: list[dict[str, Any]], published: dict[str, dict[str, Any]]) -> None:
    """Every published message is stored, at least as far as it was published; no duplicates."""
    ids = [m["id"] for m in history]
    assert not duplicates(ids), duplicates(ids)
    stored = {m["id"]: m for m in history}
    for msg_id, last in published.items():
        assert msg_id in stored, f"published message {msg_id} ({last['text']!r}) is not in history"
        kept = stored[msg_id]
        assert kept["text"].startswith(last["text"]), (kept, last)
        if last["final"]:
            assert kept["final"] and kept["text"] == last["text"], (kept, last)


def replayed_send_ids(log_path: Path, start: int) -> set[str]:
    """The send ids the daemon replayed from its journal (its `journal_replay` log lines)."""
    with log_path.open("rb") as f:
        f.seek(start)
        lines = f.read().decode(errors="replace").splitlines()
    ids: set[str] = set()
    for line in lines:
        if '"journal_replay"' in line:
            with contextlib.suppress(ValueError):
                ids.update(json.loads(line).get("send_ids") or [])
    return ids


async def test_sigkill_at_random_points_loses_nothing(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess, daemons: Callable[..., DaemonProcess],
) -> None:
    rng = random.Random(SEED)
    print(f"sigkill fault test seed {SEED} (LKB_FAULT_SEED={SEED} repeats this run)")
    agent = framework_agent  # the real framework: word-sized chunks, 20 ms apart
    base = f"fault-kill-{uuid.uuid4().hex[:6]}"
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("talk", livekit_server, agent.agent_name),
        base_topic=base,
    )
    database = tmp_path / "state" / DATABASE_NAME
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    delays: list[float] = []
    log_start: int | None = None
    came_back = 0  # restarts after a kill that answered a history request
    try:
        for round_ in range(KILLS + 1):
            mark = probe.mark()
            daemon = daemons(config)
            if log_start is None:
                log_start = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
            await probe.wait_for(
                f"{base}/bridge/state", lambda m: m.payload == b'{"state":"online"}', after=mark,
                timeout=20,
            )
            published = {e["id"]: e for e in message_events(probe, base, "talk")}
            reply = await request(probe, base, "session/history", {"session": "talk"}, timeout=20)
            assert reply["status"] == "ok", reply
            came_back += round_ > 0
            check_history(reply["data"]["messages"], published)
            if round_ == KILLS:
                break
            await probe.wait_for(
                f"{base}/talk/state", state_is("connected", "listening"), after=mark, timeout=20
            )
            text = f"question {round_}: what happens when the power goes out in the middle?"
            probe.publish(f"{base}/talk/send", {"text": text, "id": f"q{round_}"})
            # A quarter of the kills land while the send itself is in flight (through the broker,
            # the daemon's inbox and its lane), the rest anywhere in the agent's answer.
            delay = rng.uniform(0.0, 0.02) if rng.random() < 0.25 else rng.uniform(0.0, 1.2)
            delays.append(delay)
            await asyncio.sleep(delay)
            daemon.kill()
            assert integrity_check(database) == ["ok"]
            await asyncio.sleep(0.2)  # what the dead daemon published reaches the probe

        # The observer: every user_input the daemon published or stored, by message id (the
        # journal stores the sent text the moment LiveKit has it, so a send killed before its
        # loopback was published is still seen); a send carried out twice has two ids.
        questions = [f"question {n}" for n in range(KILLS)]

        def by_id(history: list[dict[str, Any]] | None = None) -> dict[str, str]:
            seen = {e["id"]: e["text"] for e in message_events(probe, base, "talk")
                    if e["type"] == "user_input"}  # fmt: skip
            seen |= {m["id"]: m["text"] for m in history or [] if m["type"] == "user_input"}
            return seen

        def asked(history: list[dict[str, Any]] | None = None) -> list[str]:
            return [text.split(":")[0] for text in by_id(history).values()]

        await eventually(lambda: set(questions) <= set(asked()), 30)
        await asyncio.sleep(1.0)  # room for a late second copy to show itself
        reply = await request(probe, base, "session/history", {"session": "talk"})
        history = reply["data"]["messages"]
        all_arrived = set(questions) <= set(asked(history))
        stored = [m["text"].split(":")[0] for m in history if m["type"] == "user_input"]
        alive = daemon.proc is not None and daemon.proc.poll() is None
        outcome = tally("daemon SIGKILL mid-conversation").record(
            injected=KILLS, survived=came_back, expected=questions, seen=asked(history),
            note=f"seed {SEED}: kills {min(delays):.2f}-{max(delays):.2f} s after a send;"
            f" {len(history)} messages in history; integrity ok after every kill",
        )
        missing = [q for q in questions if q not in set(asked(history))]
        assert all_arrived and outcome.lost == 0, f"acknowledged sends lost: {missing} (seed {SEED})"
        # A send reaches the agent twice only from the documented window: LiveKit had the whole
        # text stream, the kill came before the journal recorded the hand-over, and the restart
        # replayed the entry. Never from a second MQTT delivery nor a finished entry.
        replayed = replayed_send_ids(daemon.log_path, log_start or 0)
        twice = duplicates(asked(history))
        window = {q for q in twice if f"q{q.split()[1]}" in replayed}
        assert set(twice) == window, f"sent twice outside the window: {twice} (seed {SEED})"
        if twice:
            print(f"in the hand-over window (sent again after a replay): {sorted(twice)}")
        assert came_back == KILLS and alive
        check_history(history, {e["id"]: e for e in message_events(probe, base, "talk")})
        assert set(duplicates(stored)) <= window, duplicates(stored)
        assert daemon.stop() == 0
        assert integrity_check(database) == ["ok"]
    finally:
        probe.close()


async def test_a_send_held_for_the_agent_survives_a_kill(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemons: Callable[..., DaemonProcess],
) -> None:
    """A send the daemon has received and acknowledged but not yet delivered (held until the
    agent listens) is carried out after a SIGKILL and a restart, once: the daemon journaled it
    before it acknowledged it, and replays it from the journal."""
    mute = await scripted_agent(initial_state=None)  # joins, but never starts listening
    base = f"fault-held-{uuid.uuid4().hex[:6]}"
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("hold", livekit_server, mute.agent_name),
        base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config)
        await probe.wait_for(f"{base}/hold/state", lambda m: bool(m.payload) and (
            (m.json().get("agent") or {}).get("lifecycle") == "connected"), timeout=20)
        probe.publish(f"{base}/hold/send", {"text": "held while the agent warms up", "id": "h1"})
        await asyncio.sleep(1.0)  # received and held: the agent is in the room, not listening
        daemon.kill()
        await mute.aclose()
        agent = await scripted_agent(agent_name=mute.agent_name)
        restarted = daemons(config)
        job = await agent.wait_for_job(timeout=20)
        texts: list[str] = []
        with contextlib.suppress(TimeoutError):
            texts.append((await asyncio.wait_for(job.chat.get(), 8)).text)
            while True:  # anything more that arrives: a second copy would be a duplicate
                texts.append((await asyncio.wait_for(job.chat.get(), 1.0)).text)
        alive = restarted.proc is not None and restarted.proc.poll() is None
        outcome = tally("daemon SIGKILL with a send held").record(
            injected=1, survived=int(alive), expected=["held while the agent warms up"],
            seen=texts, note="a send held for a warming-up agent, then a kill: replayed from"
            " the journal",
        )
        assert outcome.lost == 0 and outcome.duplicated == 0, texts
        assert alive
    finally:
        probe.close()


LOAD_KILLS = 10
LOAD_RATE = 20.0
"""Sends per second published while the daemon is killed again and again."""


async def test_sigkill_under_load_loses_no_acknowledged_send(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemons: Callable[..., DaemonProcess],
) -> None:
    """10 SIGKILLs at random moments (half of them within 0.5 s of the daemon coming back
    online, while the sends queued at the broker are being delivered) while a publisher sends
    20 msg/s: every send the broker acknowledged reaches the agent; a second copy only from a
    journal replay (the hand-over window)."""
    rng = random.Random(SEED + 1)
    agent = await scripted_agent(echo=False)
    base = f"fault-load-{uuid.uuid4().hex[:6]}"
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("busy", livekit_server, agent.agent_name),
        base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/bridge/state")
    publisher = Publisher("127.0.0.1", mqtt_broker.port)
    sent: list[str] = []
    stop = asyncio.Event()

    async def publish() -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            send_id = f"L{len(sent):05d}"
            publisher.publish(f"{base}/busy/send", json.dumps({"text": send_id, "id": send_id}))
            sent.append(send_id)
            next_at += 1 / LOAD_RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def online(mark: int) -> bool:
        try:
            await probe.wait_for(f"{base}/bridge/state", lambda m: m.payload == ONLINE,
                                 after=mark, timeout=20)  # fmt: skip
        except AssertionError:
            return False
        return True

    came_back = 0
    kill_points: list[str] = []
    try:
        mark = probe.mark()
        daemon = daemons(config)
        log_start = daemon.log_path.stat().st_size if daemon.log_path.exists() else 0
        assert await online(mark)
        pump = asyncio.get_running_loop().create_task(publish(), name="fault-load-publisher")
        for k in range(LOAD_KILLS):
            early = k % 2 == 0
            delay = rng.uniform(0.0, 0.5) if early else rng.uniform(0.5, 3.0)
            kill_points.append(f"{delay:.2f}")
            await asyncio.sleep(delay)
            daemon.kill()
            assert integrity_check(tmp_path / "state" / DATABASE_NAME) == ["ok"]
            await asyncio.sleep(rng.uniform(0.0, 1.0))  # sends pile up at the broker
            mark = probe.mark()
            daemon = daemons(config)
            came_back += await online(mark)
        await asyncio.sleep(2.0)
        stop.set()
        await pump
        await asyncio.to_thread(publisher.wait_acknowledged)  # the broker has every send

        heard: list[str] = []

        def collect() -> list[str]:
            for job in agent.jobs:
                while not job.chat.empty():
                    heard.append(job.chat.get_nowait().text)
            return heard

        all_arrived = await eventually(lambda: set(sent) <= set(collect()), 60)
        await asyncio.sleep(1.0)  # room for a late second copy
        alive = daemon.proc is not None and daemon.proc.poll() is None
        twice = duplicates(collect())
        outcome = tally("daemon SIGKILL under load (20 msg/s)").record(
            injected=LOAD_KILLS, survived=came_back, expected=sent, seen=collect(),
            note=f"seed {SEED}: {len(sent)} sends; kills {', '.join(kill_points)} s after"
            f" coming back online; sent twice (hand-over window): {len(twice)}",
        )
        missing = sorted(set(sent) - set(heard))
        assert all_arrived and outcome.lost == 0, f"acknowledged sends lost: {missing[:20]}"
        replayed = replayed_send_ids(daemon.log_path, log_start)
        assert set(twice) <= replayed, f"sent twice outside the window: {twice} (seed {SEED})"
        assert came_back == LOAD_KILLS and alive
        if twice:
            print(f"in the hand-over window (sent again after a replay): {sorted(twice)}")
    finally:
        stop.set()
        publisher.close()
        probe.close()
