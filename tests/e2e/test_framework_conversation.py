"""Conversations with the real LiveKit Agents framework: whole replies, tied to their question.

Marked `conversation`: `make test` runs these a second time with LKB_CPU_LOAD=1 (one busy-loop
process per core beside the tests), the situation of a small device whose CPU is busy.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.framework_agent import FrameworkAgentProcess
from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from lkbridge import MessageType, ReplyStatus, Session
from tests.e2e.session_helpers import minted, wait_until
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = [pytest.mark.e2e, pytest.mark.conversation]

LOADED_MESSAGES = max(40, int(os.environ.get("LKB_CONVERSATION_MESSAGES", "40")))


def reply(text: str) -> str:
    """What the framework agent answers (devstack/framework_agent/worker.py)."""
    return f"You said: {text}"


async def test_session_replies_are_whole_tied_to_their_question_and_quiet(
    livekit_server: LiveKitServer,
    framework_agent: FrameworkAgentProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="root")
    session = Session.with_agent(framework_agent.agent_name, token_source=minted(livekit_server))
    async with session:
        await session.start()
        await wait_until(lambda: session.agent.is_connected, 30, "the framework agent")
        for text in ["first question", "a second one, longer than the first"]:
            sent = await session.send_text(text)
            assert sent is not None
            outcome = await session.wait_for_reply(sent.id, timeout=30)
            assert outcome.status is ReplyStatus.ANSWERED, outcome
            assert outcome.text == reply(text)
            assert outcome.reply is not None and outcome.reply.reply_to == sent.id
        agent_texts = [m for m in session.messages if m.type is MessageType.AGENT_TRANSCRIPT]
        assert [m.text for m in agent_texts] == [
            reply("first question"),
            reply("a second one, longer than the first"),
        ]
        assert all(m.final for m in agent_texts)
    noisy = [r.getMessage() for r in caplog.records if "lk.agent.session" in r.getMessage()]
    assert noisy == [], "the framework's session-host streams are handled quietly"


async def test_interrupted_question_is_reported_and_the_newer_one_answered(
    livekit_server: LiveKitServer, framework_agent: FrameworkAgentProcess
) -> None:
    session = Session.with_agent(framework_agent.agent_name, token_source=minted(livekit_server))
    async with session:
        await session.start()
        await wait_until(lambda: session.agent.is_connected, 30, "the framework agent")
        first = await session.send_text("[think 3] a question the agent ponders")
        assert first is not None
        # Once it thinks about the first, the framework cuts that reply off for the second.
        # (Text that reaches it before it began the first would be answered in turn, and that
        # answer, begun after the second was sent, would be tied to the second: see reply_to.)
        await wait_until(
            lambda: session.agent.state is not None and session.agent.state.value == "thinking",
            30, "the agent thinking about the first question",
        )
        second = await session.send_text("[instant] the question that matters")
        assert second is not None
        first_outcome = await session.wait_for_reply(first.id, timeout=30)
        second_outcome = await session.wait_for_reply(second.id, timeout=30)
        assert first_outcome.status is ReplyStatus.INTERRUPTED, first_outcome
        assert first_outcome.superseded_by == second.id
        assert second_outcome.status is ReplyStatus.ANSWERED, second_outcome
        assert second_outcome.text == reply("[instant] the question that matters")


async def test_many_replies_are_stored_and_published_whole(
    tmp_path: Path,
    livekit_server: LiveKitServer,
    mqtt_broker: Mosquitto,
    framework_agent: FrameworkAgentProcess,
    daemon_factory: Callable[..., DaemonProcess],
    cpu_load: int,
    log_dir: Path,
    conversation_summary: list[str],
) -> None:
    """The issue-10 defect: under CPU load, replies were stored and published as their last
    chunk only. Every final text (SQLite and MQTT) must be the agent's whole reply, and no
    message id may be published final with two different texts."""
    base = "conv"
    config = daemon_config(
        tmp_path, mqtt_broker.port,
        session_toml("talk", livekit_server, framework_agent.agent_name), base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemon_factory(config)
        await probe.wait_for(
            f"{base}/talk/state",
            lambda m: bool(m.payload) and (m.json().get("agent") or {}).get("is_connected"),
            timeout=60,
        )
        expected: dict[str, str] = {}
        for i in range(LOADED_MESSAGES):
            text = f"fc-{i} two three"
            mark = probe.mark()
            probe.publish(
                f"{base}/bridge/request/session/send",
                json.dumps({"session": "talk", "text": text, "transaction": f"t{i}"}),
            )
            answer = await probe.wait_for(
                f"{base}/bridge/response/session/send",
                lambda m, i=i: m.json().get("transaction") == f"t{i}", after=mark, timeout=30,
            )
            assert answer.json()["status"] == "ok", answer.json()
            sent_id = answer.json()["data"]["id"]
            expected[sent_id] = reply(text)
            await probe.wait_for(
                f"{base}/talk/message",
                lambda m, sent_id=sent_id: m.json().get("type") == "agent_transcript"
                and m.json().get("reply_to") == sent_id and m.json().get("final"),
                after=mark, timeout=60,
            )
        assert daemon.stop() == 0

        finals: dict[str, set[str]] = defaultdict(set)
        published_bad: list[dict[str, Any]] = []
        for seen in probe.seen(f"{base}/talk/message"):
            event = seen.json()
            if event["type"] != "agent_transcript" or not event["final"]:
                continue
            finals[event["id"]].add(event["text"])
            if expected.get(event["reply_to"]) != event["text"]:
                published_bad.append(event)
        two_texts = {msg_id: texts for msg_id, texts in finals.items() if len(texts) > 1}

        db = sqlite3.connect(f"file:{tmp_path / 'state' / 'lkbridge.sqlite3'}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT id, text, final, reply_to FROM messages"
                " WHERE session_id = 'talk' AND type = 'agent_transcript'"
            ).fetchall()
        finally:
            db.close()
        stored_bad = [r for r in rows if not r[2] or expected.get(r[3]) != r[1]]

        summary = {
            "cpu_load": cpu_load, "messages": LOADED_MESSAGES, "stored": len(rows),
            "stored_corrupted": len(stored_bad), "published_final_corrupted": len(published_bad),
            "ids_final_with_two_texts": len(two_texts),
        }
        with (log_dir / "conversation-load-summary.jsonl").open("a") as out:
            out.write(json.dumps(summary) + "\n")
        conversation_summary.append(
            f"{LOADED_MESSAGES} replies with {cpu_load} busy-loop process(es) beside: "
            f"{len(rows)} stored, {len(stored_bad)} stored corrupted, {len(published_bad)}"
            f" published final corrupted, {len(two_texts)} ids final with two texts"
        )
        assert len(rows) == LOADED_MESSAGES, rows
        assert stored_bad == [], stored_bad[:5]
        assert published_bad == [], published_bad[:5]
        assert two_texts == {}, two_texts
    finally:
        probe.close()

