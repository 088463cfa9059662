"""Broker restarts under load: commands arrive exactly once, events arrive after the outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.agent import AgentJob
from devstack.livekit_server import LiveKitServer
from lkbridge.daemon.store import DATABASE_NAME
from tests.faults.helpers import (
    PersistentMosquitto,
    PersistentProbe,
    Publisher,
    bridge_events,
    duplicates,
    eventually,
    message_events,
    request,
    state_is,
    stored_finals,
    tally,
    wait_until,
)
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml

pytestmark = pytest.mark.e2e

RATE = 200.0
"""Messages per second in each direction."""
PHASE = 2.0
"""Seconds of load before and after the outage."""
OUTAGE = 1.5
"""Seconds the broker is away while the agent keeps talking."""


class Talker:
    """The agent saying one short message after another at RATE (events flowing out)."""

    def __init__(self, job: AgentJob) -> None:
        self.job = job
        self.said: dict[str, str] = {}  # segment id -> text
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fault-talker")

    async def _run(self) -> None:
        next_at = time.monotonic()
        n = 0
        while True:
            text = f"agent line {n}"
            segment = await self.job.say(text, chunk_size=100, speaking_state=False)
            self.said[segment] = text
            n += 1
            next_at += 1 / RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class ChatCounter:
    """Counts every lk.chat message the agent's handler receives, by text (= idempotency id)."""

    def __init__(self, job: AgentJob) -> None:
        self.counts: Counter[str] = Counter()
        self._task = asyncio.get_running_loop().create_task(self._run(job), name="fault-chat")

    async def _run(self, job: AgentJob) -> None:
        while True:
            message = await job.chat.get()
            self.counts[message.text] += 1

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def publish_paced(publisher: Publisher, topic: str, ids: list[str], resend: list[str]) -> None:
    """ids at RATE as {"text", "id"} sends; every 8th slot also re-sends an id from `resend`."""
    next_at = time.monotonic()
    for n, send_id in enumerate(ids):
        publisher.publish(topic, json.dumps({"text": send_id, "id": send_id}))
        if resend and n % 8 == 0:
            again = resend.pop()
            publisher.publish(topic, json.dumps({"text": again, "id": again}))
        next_at += 1 / RATE
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def test_broker_restart_under_load_loses_and_duplicates_nothing(
    tmp_path: Path, livekit_server: LiveKitServer, scripted_agent: Callable[..., Any],
    daemons: Callable[..., DaemonProcess],
) -> None:
    base = f"fault-br-{uuid.uuid4().hex[:6]}"
    broker = PersistentMosquitto(tmp_path / "broker")
    broker.start()
    agent = await scripted_agent(echo=False)
    config = daemon_config(
        tmp_path, broker.port, session_toml("load", livekit_server, agent.agent_name),
        base_topic=base,
    )
    probe = PersistentProbe("127.0.0.1", broker.port, f"{base}/#")
    send_topic = f"{base}/load/send"
    counter: ChatCounter | None = None
    try:
        daemon = daemons(config)
        await probe.wait_for(f"{base}/load/state", state_is("connected", "listening"), timeout=20)
        job = agent.jobs[0]
        counter = ChatCounter(job)
        talker = Talker(job)
        talker.start()

        per_phase = int(RATE * PHASE)
        before = [f"cmd-{n:05d}" for n in range(per_phase)]
        after = [f"cmd-{n:05d}" for n in range(per_phase, 2 * per_phase)]
        publisher = Publisher("127.0.0.1", broker.port)
        await publish_paced(publisher, send_topic, before, [])
        await asyncio.to_thread(publisher.wait_acknowledged)
        publisher.close()

        # The outage: Mosquitto stops (saving its sessions) with commands still on their way to
        # the daemon, while the agent keeps talking; the daemon must queue those events.
        said_before_outage = len(talker.said)
        await asyncio.to_thread(broker.stop)
        await asyncio.sleep(OUTAGE)
        said_in_outage = len(talker.said) - said_before_outage
        await asyncio.to_thread(broker.start)

        publisher = Publisher("127.0.0.1", broker.port)
        # Re-send a slice of ids the broker already acknowledged: none may reach the agent twice.
        resend = before[:25] + before[-25:]
        await publish_paced(publisher, send_topic, after, list(resend))
        await asyncio.to_thread(publisher.wait_acknowledged)
        publisher.close()
        await talker.stop()

        everything = before + after
        arrived = await eventually(lambda: all(counter.counts[i] for i in everything), 45)
        await asyncio.sleep(1.0)  # room for a late duplicate to show itself
        missing = [i for i in everything if not counter.counts[i]]
        doubled = {i: n for i, n in counter.counts.items() if n != 1}
        alive = daemon.proc is not None and daemon.proc.poll() is None
        outcome = tally("broker restart under load").record(
            injected=1, survived=int(alive), expected=everything,
            seen=list(counter.counts.elements()),
            note=f"{len(everything)} commands (+{len(resend)} re-sent ids) and"
            f" {len(talker.said)} agent messages ({said_in_outage} during the outage)",
        )
        assert arrived and outcome.lost == 0, missing[:10]
        assert outcome.duplicated == 0 and not doubled, doubled

        def events_delivered() -> bool:
            finals = {e["id"] for e in message_events(probe, base, "load") if e["final"]}
            return all(segment in finals for segment in talker.said)

        await wait_until(events_delivered, 45, "every agent message as a final message event")
        events = message_events(probe, base, "load")
        finals = {e["id"]: e["text"] for e in events if e["final"]}
        for segment, text in talker.said.items():
            assert finals[segment] == text
        loopback = [e["text"] for e in events if e["type"] == "user_input"]
        assert set(loopback) >= set(everything)
        # QoS 1 may repeat a publish over the reconnect; the daemon sent each command once.
        assert len(duplicates(loopback)) <= len(resend), duplicates(loopback)
        assert not [e for e in bridge_events(probe, base, "mqtt_messages_dropped") if e["dropped"]]

        history = await request(probe, base, "session/history", {"session": "load"})
        stored = [m["id"] for m in history["data"]["messages"]]
        assert not duplicates(stored)
        assert alive
    finally:
        if counter is not None:
            await counter.close()
        probe.close()
        broker.stop()


async def test_events_over_the_queue_bound_are_counted_and_reported(
    tmp_path: Path, livekit_server: LiveKitServer, scripted_agent: Callable[..., Any],
    daemons: Callable[..., DaemonProcess],
) -> None:
    """With [mqtt] queue_limit small, an outage keeps the oldest events and counts the rest."""
    base = f"fault-bq-{uuid.uuid4().hex[:6]}"
    limit = 40
    said = 60  # one-chunk agent messages: one or two message events each (chunk, then final)
    broker = PersistentMosquitto(tmp_path / "broker")
    broker.start()
    agent = await scripted_agent(echo=False)
    config = daemon_config(
        tmp_path, broker.port, session_toml("small", livekit_server, agent.agent_name),
        base_topic=base,
    )
    text = config.read_text().replace("[mqtt]\n", f"[mqtt]\nqueue_limit = {limit}\n", 1)
    config.write_text(text)
    probe = PersistentProbe("127.0.0.1", broker.port, f"{base}/#")
    try:
        daemon = daemons(config)
        await probe.wait_for(f"{base}/small/state", state_is("connected", "listening"), timeout=20)
        job = agent.jobs[0]
        await asyncio.to_thread(broker.stop)
        segments = [await job.say(f"line {n}", chunk_size=100, speaking_state=False)
                    for n in range(said)]
        # The daemon stores each message before it publishes it: once all are stored as final,
        # every event of the outage was either queued or dropped.
        database = tmp_path / "state" / DATABASE_NAME
        assert await eventually(lambda: stored_finals(database, "small") == said, 20)
        mark = probe.mark()
        await asyncio.to_thread(broker.start)
        report = await probe.wait_for(
            f"{base}/bridge/event", lambda m: m.json().get("event") == "mqtt_messages_dropped",
            timeout=20, after=mark,
        )
        await asyncio.sleep(0.5)
        after_outage = [
            e for e in message_events(probe, base, "small") if e["id"] in set(segments)
        ]
        delivered = len({(e["id"], e["final"]) for e in after_outage})
        dropped = report.json()["dropped"]
        alive = daemon.proc is not None and daemon.proc.poll() is None
        # Over the bound, events are dropped by design and reported: they count as lost here.
        outcome = tally("broker outage over the queue bound").record(
            injected=1, survived=int(alive), expected=segments,
            seen=list(dict.fromkeys(e["id"] for e in after_outage)),
            note=f"{said} agent messages during the outage, queue_limit {limit}: {delivered}"
            f" events delivered, {dropped} counted in mqtt_messages_dropped (the lost ones)",
        )
        assert outcome.duplicated == 0 and 0 < outcome.lost <= dropped, (outcome, dropped)
        # The queue held the message events and one retained last_reply (each newer reply
        # replaced the one waiting, so the outage did not fill the queue with old replies).
        assert delivered == limit - 1, (delivered, limit)
        # A message is one event or two (when the daemon reads its only chunk after the stream
        # already ended, the first event is the final one): every one was queued or counted.
        assert said <= delivered + dropped <= 2 * said, (delivered, dropped, said)
        # The queue keeps the oldest events and drops the newest: a prefix arrives, in order.
        arrived = list(dict.fromkeys(e["id"] for e in after_outage))
        assert arrived == segments[: len(arrived)], (arrived, segments)
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        probe.close()
        broker.stop()
