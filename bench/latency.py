"""Benchmarks 1 and 2: one message at a time through an idle bridge, timed on one clock.

The publisher, the agent and the MQTT subscriber all live in this process, so each latency is
the difference of two `time.perf_counter()` readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from bench.mqttc import BenchMqtt
from bench.stats import summarize
from bench.targets import Launched
from devstack.agent import AgentJob, ChatMessage

MAX_LOST_IN_A_ROW = 10
"""A target that loses this many messages in a row is broken; stop measuring it."""


class ChatArrivals:
    """Stands in for an AgentJob's chat queue: notes when the agent's lk.chat handler has a text."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.duplicates = 0
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._expected: int | None = None
        self._all_in = asyncio.Event()

    def put_nowait(self, message: ChatMessage) -> None:
        now = time.perf_counter()
        if message.text in self.at:
            self.duplicates += 1
            return
        self.at[message.text] = now
        waiter = self._waiters.pop(message.text, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)
        if self._expected is not None and len(self.at) >= self._expected:
            self._all_in.set()

    async def put(self, message: ChatMessage) -> None:
        self.put_nowait(message)

    async def wait_for_count(self, count: int, timeout: float) -> None:
        """Until `count` distinct texts arrived, or timeout (no error: the caller counts)."""
        self._expected = count
        if len(self.at) >= count:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_in.wait(), timeout)

    def waiter(self, text: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters[text] = future
        return future


def attach(job: AgentJob) -> ChatArrivals:
    arrivals = ChatArrivals()
    job.chat = arrivals  # type: ignore[assignment]  # the job only ever calls put()
    return arrivals


async def send_latency(
    target: Launched, job: AgentJob, mqttc: BenchMqtt, *, messages: int, warmup: int,
    gap: float = 0.01, timeout: float = 5.0,
) -> dict[str, Any]:  # fmt: skip
    """MQTT `send` publish → the agent's lk.chat handler, one message in flight at a time."""
    arrivals = attach(job)
    topic = target.send_topic(target.sessions[0])
    tag = uuid.uuid4().hex[:6]
    samples: list[float] = []
    lost = in_a_row = 0
    for i in range(warmup + messages):
        text = f"{tag}:{i}"
        waiter = arrivals.waiter(text)
        sent = time.perf_counter()
        mqttc.publish(topic, text)
        try:
            arrived = await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            lost += i >= warmup
            in_a_row += 1
            if in_a_row >= MAX_LOST_IN_A_ROW:
                break
            continue
        in_a_row = 0
        if i >= warmup:
            samples.append((arrived - sent) * 1000)
        await asyncio.sleep(gap)
    return summarize(samples) | {
        "lost": lost,
        "warmup": warmup,
        "samples_ms": [round(s, 3) for s in samples],
    }


async def transcription_latency(
    target: Launched, job: AgentJob, mqttc: BenchMqtt, *, messages: int, warmup: int,
    chunks_per_reply: int = 10, gap: float = 0.01, timeout: float = 5.0,
) -> dict[str, Any]:  # fmt: skip
    """An agent lk.transcription chunk → its `message` event at an MQTT subscriber.

    The agent speaks replies of `chunks_per_reply` chunks the way the agents framework does
    (one delta stream per reply, final flag in the trailer); each chunk is timed from just
    before the agent writes it to the first event whose text ends with it.
    """
    loop = asyncio.get_running_loop()
    topic = target.message_topic(target.sessions[0])
    tag = uuid.uuid4().hex[:6]
    waiters: dict[str, asyncio.Future[float]] = {}

    def arrived(chunk: str, at: float) -> None:
        waiter = waiters.pop(chunk, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(at)

    def on_message(at: float, payload: bytes) -> None:  # on paho's thread
        try:
            text = json.loads(payload)["text"]
        except (ValueError, KeyError, TypeError):
            return
        loop.call_soon_threadsafe(arrived, text[text.rfind("<") :], at)

    mqttc.subscribe(topic, on_message)
    samples: list[float] = []
    lost = in_a_row = 0
    total = warmup + messages
    index = 0
    try:
        while index < total and in_a_row < MAX_LOST_IN_A_ROW:
            writer = await job.room.local_participant.stream_text(
                topic="lk.transcription",
                attributes={"lk.segment_id": f"SG_{tag}_{index}", "lk.transcription_final": "false"},
            )
            for _ in range(min(chunks_per_reply, total - index)):
                chunk = f"<{tag}:{index}>"
                waiter = waiters[chunk] = loop.create_future()
                written = time.perf_counter()
                await writer.write(chunk)
                try:
                    at = await asyncio.wait_for(waiter, timeout)
                except TimeoutError:
                    lost += index >= warmup
                    in_a_row += 1
                else:
                    in_a_row = 0
                    if index >= warmup:
                        samples.append((at - written) * 1000)
                index += 1
                await asyncio.sleep(gap)
            await writer.aclose(attributes={"lk.transcription_final": "true"})
            await asyncio.sleep(gap)  # let the reply's final event pass before the next reply
    finally:
        mqttc.unsubscribe(topic)
    return summarize(samples) | {
        "lost": lost,
        "warmup": warmup,
        "chunks_per_reply": chunks_per_reply,
        "samples_ms": [round(s, 3) for s in samples],
    }


async def fsync_count(
    target: Launched, job: AgentJob, mqttc: BenchMqtt, messages: int, work_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """fsync/fdatasync calls per message, counted with strace in two untimed passes.

    Transcription: `messages` chunks in replies of 10 (9 growing updates and the reply's final
    message each). Sends: `messages` sends, one at a time. The process is idle before and after.
    """
    from bench.fsyncs import FsyncCounter

    out: dict[str, Any] = {"messages": messages}
    counter = FsyncCounter(target.pid, work_dir / f"fsyncs-{target.base}-transcription.txt")
    counter.start()
    data = await transcription_latency(target, job, mqttc, messages=messages, warmup=0)
    await asyncio.sleep(1.0)
    syncs = counter.stop()
    finals = -(-messages // data["chunks_per_reply"])
    out["transcription"] = {
        "chunks": messages, "finals": finals, "fsyncs": syncs,
        "fsyncs_per_chunk": round(syncs / messages, 3),
        "fsyncs_per_final_if_none_per_chunk": round(syncs / finals, 3),
    }
    counter = FsyncCounter(target.pid, work_dir / f"fsyncs-{target.base}-send.txt")
    counter.start()
    await send_latency(target, job, mqttc, messages=messages, warmup=0)
    await asyncio.sleep(1.0)
    syncs = counter.stop()
    out["send"] = {"sends": messages, "fsyncs": syncs, "fsyncs_per_send": round(syncs / messages, 3)}
    return out
