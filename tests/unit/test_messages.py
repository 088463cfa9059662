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
        "reply_to": None,
    }
    assert ReceivedMessage.from_dict(data) == message


def test_reply_to_round_trips_and_is_optional_and_checked() -> None:
    message = _message(reply_to="3f0c-sent-id")
    data = message.to_dict()
    assert data["reply_to"] == "3f0c-sent-id"
    assert ReceivedMessage.from_dict(data) == message
    del data["reply_to"]  # events of older versions have no such field
    assert ReceivedMessage.from_dict(data).reply_to is None
    with pytest.raises(ValueError, match="reply_to"):
        ReceivedMessage.from_dict({**data, "reply_to": 7})
    with pytest.raises(ValueError, match="reply_to"):
        ReceivedMessage.from_dict({**data, "reply_to": ""})


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
