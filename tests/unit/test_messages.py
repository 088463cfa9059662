"""ReceivedMessage / SentMessage: JSON round trips, validation and the loopback form."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from lkbridge.messages import MessageType, ReceivedMessage, SentMessage


def _message(**overrides: object) -> ReceivedMessage:
    fields: dict[str, object] = {
        "id": "SG_1",
        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        "type": MessageType.AGENT_TRANSCRIPT,
        "text": "Hello there",
        "final": True,
    }
    fields.update(overrides)
    return ReceivedMessage(**fields)  # type: ignore[arg-type]


def test_received_message_round_trips_through_json() -> None:
    message = _message()
    data = json.loads(json.dumps(message.to_dict()))
    assert data == {
        "id": "SG_1",
        "timestamp": "2026-01-02T03:04:05.678+00:00",
        "type": "agent_transcript",
        "text": "Hello there",
        "final": True,
    }
    assert ReceivedMessage.from_dict(data) == message


@pytest.mark.parametrize("kind", list(MessageType))
def test_every_message_type_round_trips(kind: MessageType) -> None:
    message = _message(type=kind, final=False)
    assert ReceivedMessage.from_dict(message.to_dict()) == message


def test_timestamps_are_normalised_to_aware_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    parsed = ReceivedMessage.from_dict(
        {"id": "a", "timestamp": "2026-01-02T05:04:05+02:00", "type": "user_input", "text": "x"}
    )
    assert parsed.timestamp == datetime(2026, 1, 2, 5, 4, 5, tzinfo=plus_two)
    assert parsed.timestamp.tzinfo == UTC
    assert parsed.final is False  # absent means not final
    zulu = ReceivedMessage.from_dict(
        {"id": "a", "timestamp": "2026-01-02T03:04:05Z", "type": "user_input", "text": "x"}
    )
    assert zulu.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    millis = ReceivedMessage.from_dict(
        {"id": "a", "timestamp": 1_767_323_045_000, "type": "user_input", "text": "x"}
    )
    assert millis.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"timestamp": "2026-01-01T00:00:00Z", "type": "user_input", "text": "x"}, "id"),
        ({"id": "", "timestamp": "2026-01-01T00:00:00Z", "type": "user_input", "text": "x"}, "id"),
        ({"id": "a", "type": "user_input", "text": "x"}, "timestamp"),
        ({"id": "a", "timestamp": "yesterday", "type": "user_input", "text": "x"}, "timestamp"),
        ({"id": "a", "timestamp": "2026-01-01T00:00:00Z", "type": "shout", "text": "x"}, "type"),
        ({"id": "a", "timestamp": "2026-01-01T00:00:00Z", "type": "user_input"}, "text"),
        (
            {
                "id": "a",
                "timestamp": "2026-01-01T00:00:00Z",
                "type": "user_input",
                "text": "x",
                "final": "yes",
            },
            "final",
        ),
    ],
)
def test_bad_message_dicts_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}:"):
        ReceivedMessage.from_dict(data)


def test_from_dict_rejects_non_objects() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        ReceivedMessage.from_dict(["not", "a", "dict"])  # type: ignore[arg-type]


def test_sent_message_has_uuid_id_utc_time_and_a_loopback_form() -> None:
    sent = SentMessage(text="hi")
    assert len(sent.id) == 36 and sent.id == sent.id.lower()
    assert sent.timestamp.tzinfo == UTC
    assert SentMessage(text="hi").id != sent.id
    loopback = sent.as_received()
    assert (loopback.id, loopback.timestamp, loopback.text) == (sent.id, sent.timestamp, "hi")
    assert loopback.type is MessageType.USER_INPUT
    assert SentMessage.from_dict(json.loads(json.dumps(sent.to_dict()))).id == sent.id


def test_reply_to_round_trips_and_is_left_out_when_none() -> None:
    from datetime import UTC, datetime

    from lkbridge.messages import MessageType, ReceivedMessage

    reply = ReceivedMessage("SG_9", datetime(2026, 1, 1, tzinfo=UTC), MessageType.AGENT_TRANSCRIPT,
                            "It is noon", True, reply_to="q-1")  # fmt: skip
    assert reply.to_dict()["reply_to"] == "q-1"
    assert ReceivedMessage.from_dict(reply.to_dict()) == reply
    assert "reply_to" not in ReceivedMessage("x", reply.timestamp, MessageType.USER_INPUT, "hi").to_dict()


def test_a_reply_keeps_the_question_it_started_after() -> None:
    from datetime import UTC, datetime

    from lkbridge.messages import MessageType, ReceivedMessage
    from lkbridge.session.state import SessionState

    state = SessionState()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    state._reply_target = "q-1"
    state._store(ReceivedMessage("SG_1", at, MessageType.AGENT_TRANSCRIPT, "It"))
    state._reply_target = "q-2"  # sent while the first reply is still streaming
    state._store(ReceivedMessage("SG_1", at, MessageType.AGENT_TRANSCRIPT, "It is", True))
    state._store(ReceivedMessage("SG_2", at, MessageType.AGENT_TRANSCRIPT, "Next"))
    replies = {m.id: m.reply_to for m in state.get_message_history()}
    assert replies == {"SG_1": "q-1", "SG_2": "q-2"}
