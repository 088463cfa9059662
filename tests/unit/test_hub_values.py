"""The hub's typed values and their JSON at the MQTT edge (the shapes docs/mqtt.md promises)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from lkbridge.bridges.hub import (
    DaemonNotice,
    ErrorInfo,
    MessageEvent,
    SessionChange,
    SessionNotice,
    SessionSnapshot,
)
from lkbridge.messages import MessageType, ReceivedMessage


def test_a_running_session_snapshot() -> None:
    snapshot = SessionSnapshot(
        "kitchen", "connected", True, {"lifecycle": "connected"}, None, "room-1", True, 2,
        "2026-01-02T03:04:05.000+00:00",
    )  # fmt: skip
    assert snapshot.to_json() == {
        "session": "kitchen", "connection_state": "connected", "is_connected": True,
        "agent": {"lifecycle": "connected"}, "error": None, "room": "room-1", "wanted": True,
        "restarts": 2, "timestamp": "2026-01-02T03:04:05.000+00:00",
        "end_reason": None, "last_restart": None,
    }  # fmt: skip
    later = dataclasses.replace(snapshot, retry_in=1.5)
    assert later.to_json()["retry_in"] == 1.5 and "retry_in" not in snapshot.to_json()
    gone = dataclasses.replace(
        later, end_reason="agent_left", last_restart={"reason": "agent_left", "at": "t"}
    )
    assert gone.to_json()["end_reason"] == "agent_left"
    assert gone.to_json()["last_restart"] == {"reason": "agent_left", "at": "t"}


def test_a_session_notice() -> None:
    notice = SessionNotice("kitchen", "unanswered", {"id": "m1", "reason": "interrupted"})
    assert notice.to_json() == {
        "event": "unanswered", "id": "m1", "reason": "interrupted", "session": "kitchen"
    }


def test_a_session_that_could_not_be_built() -> None:
    snapshot = SessionSnapshot("garage", error=ErrorInfo("config", "no secret"))
    assert snapshot.to_json() == {
        "session": "garage", "connection_state": "disconnected", "is_connected": False,
        "agent": None, "error": {"kind": "config", "message": "no secret", "at": None},
        "room": None, "wanted": False,
    }  # fmt: skip


def test_events_and_notices() -> None:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = ReceivedMessage("m1", at, MessageType.AGENT_TRANSCRIPT, "hi")
    assert MessageEvent("kitchen", message).to_json() == message.to_dict() | {"session": "kitchen"}
    assert SessionChange("kitchen", replaced=True).to_json() == {
        "session": "kitchen", "replaced": True
    }
    assert DaemonNotice("plugin_failed", {"plugin": "x"}).to_json() == {
        "event": "plugin_failed", "plugin": "x"
    }


def test_values_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ErrorInfo("k", "m").message = "other"  # type: ignore[misc]
