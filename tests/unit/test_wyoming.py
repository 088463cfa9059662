"""Unit tests of the Wyoming bridge's pure parts: config, framing bounds, answer matching."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from wyoming.info import Info

from lkbridge.bridges.hub import (
    HubError,
    HubEvent,
    HubEventKind,
    MessageEvent,
    SessionChange,
    SessionSnapshot,
    UnknownSession,
)
from lkbridge.bridges.wyoming.advertise import advertised_addresses, instance_name
from lkbridge.bridges.wyoming.answers import (
    SENTENCES,
    AnswerDesk,
    PendingAnswer,
    Reason,
    reason_for_send_error,
)
from lkbridge.bridges.wyoming.protocol import (
    MAX_DATA_BYTES,
    MAX_HEADER_BYTES,
    ProgramInfo,
    ProtocolError,
    read_event,
)
from lkbridge.bridges.wyoming.server import conversation_id_of
from lkbridge.config.files import session_from_table
from lkbridge.config.models import ConfigError, WyomingConfig
from lkbridge.messages import ReceivedMessage
from tests.support.fake_hub import FakeHub
from tests.unit.test_config import MINTED, minted, one_problem, parse

# -- config -----------------------------------------------------------------------------------


def test_wyoming_table_defaults_and_keys() -> None:
    config = parse(MINTED + "[sessions.kitchen.wyoming]\nport = 10700\n")
    assert config.sessions["kitchen"].wyoming == WyomingConfig(port=10700)
    assert config.sessions["kitchen"].wyoming.host == "127.0.0.1"
    config = parse(MINTED + """
        [sessions.kitchen.wyoming]
        host = "0.0.0.0"
        port = 10701
        name = "Kitchen agent"
        languages = ["en", "de-CH"]
        answer_timeout = 12.5
        idle_timeout = 5
        max_connections = 3
        max_waiting = 2
        max_text_length = 500
        zeroconf = true
        """)  # fmt: skip
    wyoming = config.sessions["kitchen"].wyoming
    assert wyoming == WyomingConfig(10701, "0.0.0.0", "Kitchen agent", ("en", "de-CH"), 12.5,
                                    5.0, 3, 2, 500, True)  # fmt: skip


def test_wyoming_problems_name_the_key() -> None:
    assert one_problem(MINTED + "[sessions.kitchen.wyoming]\n") == (
        "sessions.kitchen.wyoming.port: is required (the TCP port Home Assistant connects to)"
    )
    assert "sessions.kitchen.wyoming.languages[0]" in one_problem(
        MINTED + '[sessions.kitchen.wyoming]\nport = 1\nlanguages = ["english!"]\n'
    )
    assert "sessions.kitchen.wyoming.porrt" in one_problem(
        MINTED + "[sessions.kitchen.wyoming]\nport = 1\nporrt = 2\n"
    )
    two = MINTED + "[sessions.kitchen.wyoming]\nport = 10700\n" + MINTED.replace(
        "kitchen", "porch"
    ) + '[sessions.porch.wyoming]\nhost = "0.0.0.0"\nport = 10700\n'
    assert "port 10700 is already used by sessions.kitchen.wyoming" in one_problem(two)


def test_sessions_added_at_runtime_cannot_open_a_port() -> None:
    with pytest.raises(ConfigError) as info:
        session_from_table("x", minted(wyoming={"port": 10700}))
    assert [str(p) for p in info.value.problems] == [
        "sessions.x.wyoming: can only be set in the configuration file, not at runtime"
    ]


# -- framing ----------------------------------------------------------------------------------


async def read(data: bytes) -> Any:
    reader = asyncio.StreamReader(limit=MAX_HEADER_BYTES)
    reader.feed_data(data)
    reader.feed_eof()
    return await read_event(reader)


async def test_events_are_read_in_both_wire_forms() -> None:
    body = json.dumps({"text": "hi", "context": {"conversation_id": "c"}}).encode()
    header = {"type": "transcript", "version": "1.7.2", "data_length": len(body)}
    event = await read(json.dumps(header).encode() + b"\n" + body)
    assert (event.type, event.data["text"], event.data["context"]) == (
        "transcript", "hi", {"conversation_id": "c"},
    )  # fmt: skip
    inline = await read(b'{"type": "describe", "data": {"x": 1}}\n')
    assert (inline.type, inline.data) == ("describe", {"x": 1})
    assert await read(b"") is None
    assert await read(b'{"type": "describe"') is None  # cut off mid-line: the client left


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"not json\n", "header is not JSON"),
        (b"[1]\n", "expected an object"),
        (b'{"type": 1}\n', "expected an object"),
        (b'{"type": "x", "data_length": -1}\n', "data_length"),
        (b'{"type": "x", "data_length": "9"}\n', "data_length"),
        (json.dumps({"type": "x", "data_length": MAX_DATA_BYTES + 1}).encode() + b"\n", "limit"),
        (b'{"type": "x", "data_length": 3}\n[1]', "data: expected an object"),
        (b'{"type": "x", "data_length": 3}\nabc', "data is not JSON"),
        (b'{"type": "x", "payload_length": 99999999}\n', "payload_length"),
        (b'{"type": "' + b"x" * (MAX_HEADER_BYTES + 10) + b'"}\n', "header line longer"),
    ],
)
async def test_bad_or_oversized_events_are_refused(data: bytes, error: str) -> None:
    with pytest.raises(ProtocolError, match=error):
        await read(data)


def test_info_offers_one_installed_handle_program() -> None:
    event = ProgramInfo("Kitchen agent", "kitchen", ("en",)).info().event()
    info = Info.from_event(event)
    assert [(p.name, p.installed) for p in info.handle] == [("Kitchen agent", True)]
    assert info.handle[0].models[0].languages == ["en"]
    assert not info.asr and not info.tts and not info.intent and info.satellite is None
    assert info.handle[0].supports_handled_streaming is False


def test_conversation_id_is_taken_only_when_sensible() -> None:
    assert conversation_id_of({"conversation_id": "01JABC"}) == "01JABC"
    for bad in (None, [], {"conversation_id": 5}, {"conversation_id": ""},
                {"conversation_id": "x" * 201}, {"conversation_id": "a\nb"}):  # fmt: skip
        assert conversation_id_of(bad) is None


# -- answers ----------------------------------------------------------------------------------


def message(kind: str, msg_id: str, text: str = "t", final: bool = True,
            reply_to: str | None = None) -> HubEvent:  # fmt: skip
    data: dict[str, Any] = {"id": msg_id, "type": kind, "text": text, "final": final,
                            "timestamp": "2026-01-01T00:00:00Z", "reply_to": reply_to}  # fmt: skip
    return HubEvent(HubEventKind.MESSAGE, "s", MessageEvent("s", ReceivedMessage.from_dict(data)))


def state(connection_state: str, agent: dict[str, Any] | None = None) -> HubEvent:
    snapshot = SessionSnapshot("s", connection_state, agent=agent, wanted=True)
    return HubEvent(HubEventKind.STATE, "s", snapshot)


async def test_only_the_final_reply_to_the_sent_message_answers() -> None:
    pending = PendingAnswer()
    pending.feed(message("user_input", "q1"))
    pending.feed(message("agent_transcript", "a0", "early", final=True, reply_to="q1"))
    pending.sent("q1")  # the backlog is replayed now
    assert pending.future.result().text == "early"

    pending = PendingAnswer()
    pending.sent("q1")
    pending.feed(state("connected"))
    pending.feed(message("agent_transcript", "a0", "old", reply_to="q0"))
    pending.feed(message("agent_transcript", "a1", "It", final=False, reply_to="q1"))
    pending.feed(message("agent_transcript", "a1", "   ", final=True, reply_to="q1"))
    assert not pending.future.done()
    pending.feed(message("agent_transcript", "a1", "It is noon", final=True, reply_to="q1"))
    outcome = pending.future.result()
    assert (outcome.handled, outcome.text, outcome.message_id) == (True, "It is noon", "q1")


async def test_a_reply_finalised_because_the_session_is_ending_is_not_an_answer() -> None:
    pending = PendingAnswer(lambda: Reason.ENDED)
    pending.sent("q1")
    pending.feed(message("agent_transcript", "a1", "It is", final=True, reply_to="q1"))
    assert pending.future.result().reason is Reason.ENDED

    hub = FakeHub("s")
    desk = AnswerDesk(hub, "s", timeout=1, max_waiting=1)  # type: ignore[arg-type]
    assert desk._why_not_live() is Reason.ENDED  # disconnected
    hub.change("s", connection_state="connected", wanted=False)
    assert desk._why_not_live() is Reason.ENDED  # being ended
    hub.change("s", wanted=True, agent={"lifecycle": "failed"})
    assert desk._why_not_live() is Reason.AGENT_LEFT
    hub.change("s", agent={"lifecycle": "connected"}, sending=1)
    assert desk._why_not_live() is Reason.INTERRUPTED  # another text is on its way
    hub.change("s", sending=0)
    assert desk._why_not_live() is None


async def test_texts_delivered_before_the_question_do_not_interrupt_it() -> None:
    pending = PendingAnswer()
    pending.feed(message("user_input", "earlier"))  # queued before ours, delivered first
    pending.feed(message("agent_transcript", "a0", "Re", final=False, reply_to="earlier"))
    pending.feed(message("user_input", "q1"))
    pending.sent("q1")
    pending.feed(message("agent_transcript", "a0", "Reply to earlier", reply_to="earlier"))
    assert not pending.future.done()
    pending.feed(message("agent_transcript", "a1", "Mine", reply_to="q1"))
    assert pending.future.result().text == "Mine"

    pending = PendingAnswer()  # a reply closed as final after another text was sent was cut
    pending.sent("q1")
    pending.feed(message("agent_transcript", "a1", "It is", final=False, reply_to="q1"))
    pending.feed(message("user_input", "other"))
    pending.feed(message("agent_transcript", "a1", "It is", final=True, reply_to="q1"))
    assert pending.future.result().reason is Reason.INTERRUPTED

    pending = PendingAnswer()  # a text looped back after ours (still in the backlog) does
    pending.feed(message("user_input", "q1"))
    pending.feed(message("user_input", "later"))
    pending.sent("q1")
    pending.feed(message("agent_transcript", "a2", "x", final=False, reply_to="later"))
    assert pending.future.result().reason is Reason.INTERRUPTED


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([message("user_input", "q2"), message("agent_transcript", "a2", final=False,
                                               reply_to="q2")], Reason.INTERRUPTED),
        ([state("disconnected")], Reason.ENDED),
        ([HubEvent(HubEventKind.SESSION_REMOVED, "s", SessionChange("s"))], Reason.ENDED),
        ([state("connected", {"lifecycle": "failed"})], Reason.AGENT_LEFT),
    ],
)
async def test_why_there_is_no_answer(events: list[HubEvent], reason: Reason) -> None:
    pending = PendingAnswer()
    pending.sent("q1")
    for event in events:
        pending.feed(event)
    outcome = pending.future.result()
    assert (outcome.handled, outcome.reason, outcome.text) == (False, reason, SENTENCES[reason])


def test_send_errors_become_sentences_without_the_technical_text() -> None:
    assert reason_for_send_error(UnknownSession("x")) is Reason.NOT_RUNNING
    cases = {
        "lkbridge is shutting down": Reason.SHUTTING_DOWN,
        "the agent did not become active within 20 s": Reason.AGENT_UNAVAILABLE,
        "cannot send a message before connecting to the room": Reason.NOT_RUNNING,
        "send queue is full (5 messages are waiting for the agent)": Reason.BUSY,
        "disk on fire": Reason.NOT_DELIVERED,
    }
    for text, reason in cases.items():
        assert reason_for_send_error(HubError(text)) is reason, text
    assert all(s.startswith("Sorry, ") and s.endswith(".") for s in SENTENCES.values())
    assert set(SENTENCES) == set(Reason)


async def test_desk_bounds_the_queue_and_the_wait() -> None:
    hub = FakeHub("s")
    desk = AnswerDesk(hub, "s", timeout=0.2, max_waiting=1)  # type: ignore[arg-type]
    hub.observe(desk.feed)
    first = asyncio.create_task(desk.ask("one"))
    await asyncio.sleep(0)
    busy = await desk.ask("two")
    assert (busy.handled, busy.reason) == (False, Reason.BUSY)
    timed_out = await first
    assert (timed_out.reason, timed_out.message_id) == (Reason.TIMEOUT, "generated")
    assert desk.waiting == 0

    hub.fail_with = UnknownSession("s")
    assert (await desk.ask("three")).reason is Reason.NOT_RUNNING


# -- zeroconf ---------------------------------------------------------------------------------


def test_zeroconf_names_and_addresses() -> None:
    assert instance_name("Kitchen agent.v2 (beta)", "k") == "Kitchen agent v2 beta"
    assert instance_name("...", "k") == "lkbridge k"
    assert len(instance_name("x" * 100, "k")) == 63
    assert advertised_addresses("198.18.0.1") == ["198.18.0.1"]
    assert advertised_addresses("127.0.0.1") == []
    assert advertised_addresses("::1") == []
    assert all(not a.startswith("127.") for a in advertised_addresses("0.0.0.0"))


def test_a_template_cannot_carry_a_wyoming_table() -> None:
    template = MINTED.replace("[sessions.kitchen", "[templates.assistant")
    problem = one_problem(template + "[templates.assistant.wyoming]\nport = 10700\n")
    assert problem.startswith("templates.assistant.wyoming: cannot be in a template")


async def test_a_question_waits_for_the_reply_to_an_earlier_text() -> None:
    """Sent into a reply still on its way, a question would cut it and be credited its words."""
    hub = FakeHub("s")
    hub.change("s", connection_state="connected", wanted=True)
    desk = AnswerDesk(hub, "s", timeout=3, max_waiting=2)  # type: ignore[arg-type]
    hub.observe(desk.feed)
    desk.feed(message("user_input", "mqtt-1"))  # e.g. a text sent over MQTT, being answered
    asking = asyncio.create_task(desk.ask("question"))
    await asyncio.sleep(0.1)
    assert [c for c in hub.calls if c[0] == "send"] == []  # held back
    desk.feed(message("agent_transcript", "a1", "Answer to MQTT", reply_to="mqtt-1"))
    await asyncio.sleep(0.05)
    assert [c[2] for c in hub.calls if c[0] == "send"] == ["question"]
    desk.feed(message("agent_transcript", "a2", "Answer to the question", reply_to="generated"))
    assert (await asyncio.wait_for(asking, 2)).text == "Answer to the question"
