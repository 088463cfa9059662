"""The request router and the send/command payload parsers, against a small in-memory hub."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from lkbridge.bridges.hub import HubError
from lkbridge.bridges.mqtt.router import (
    ACTIONS,
    EXPIRED,
    HISTORY_PAGE_BYTES,
    BadPayload,
    Command,
    Router,
    SendPayload,
    dumps,
    history_page,
    parse_command,
    parse_send,
)
from tests.support.fake_hub import MESSAGE, FakeHub


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


class RouterUnderTest(Router):
    """The router with a one-call helper for the tests: prepare() then run(), as the bridge does."""

    async def handle(
        self, action: str, payload: bytes, *, deadline: float | None = None
    ) -> dict[str, Any]:
        return await self.run(self.prepare(action, payload), deadline=deadline)


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub("kitchen", "office")


@pytest.fixture
def router(hub: FakeHub) -> RouterUnderTest:
    return RouterUnderTest(hub, max_payload_bytes=1024)


# -- good requests ----------------------------------------------------------------------------


async def test_every_action_has_a_handler(router: Router) -> None:
    assert set(ACTIONS) == {
        "session/start", "session/end", "session/send", "session/history", "session/restore",
        "session/dismiss_error", "session/add", "session/remove", "config/reload", "health_check",
    }  # fmt: skip


async def test_start_and_end(router: Router, hub: FakeHub) -> None:
    response = await router.handle("session/start", body({"session": "kitchen"}))
    assert response == {
        "status": "ok",
        "data": {
            "session": "kitchen",
            "connection_state": "connecting",
            "is_connected": False,
            "agent": None,
            "error": None,
            "room": None,
            "wanted": False,
        },
    }
    response = await router.handle("session/end", body({"session": "kitchen", "transaction": 7}))
    assert response["status"] == "ok" and response["transaction"] == 7
    assert hub.calls == [("start", "kitchen"), ("end", "kitchen")]


async def test_transaction_is_echoed_whatever_its_type(router: Router) -> None:
    for tx in ["abc", 12, None, {"n": 1}]:
        response = await router.handle("health_check", body({"transaction": tx}))
        assert response == {"status": "ok", "data": {"status": "ok"}, "transaction": tx}


async def test_no_transaction_no_echo(router: Router) -> None:
    assert "transaction" not in await router.handle("health_check", b"{}")


async def test_empty_payload_is_an_empty_request(router: Router) -> None:
    assert (await router.handle("health_check", b""))["status"] == "ok"
    assert (await router.handle("config/reload", b"  "))["status"] == "ok"


async def test_send_with_idempotency_id(router: Router, hub: FakeHub) -> None:
    request = body({"session": "kitchen", "text": "hi", "id": "k1"})
    first = await router.handle("session/send", request)
    second = await router.handle("session/send", request)
    assert first["data"]["duplicate"] is False
    assert second["data"]["duplicate"] is True
    assert hub.calls == [("send", "kitchen", "hi", "k1")]


async def test_history_and_restore(router: Router, hub: FakeHub) -> None:
    restored = await router.handle(
        "session/restore", body({"session": "office", "messages": [MESSAGE | {"session": "x"}]})
    )
    assert restored == {"status": "ok", "data": {"session": "office", "kept": 1}}
    history = await router.handle("session/history", body({"session": "office"}))
    assert history["data"] == {
        "session": "office", "messages": [MESSAGE | {"session": "office"}], "next": None,
        "total": 1,
    }


async def test_restore_normalises_timestamps(router: Router, hub: FakeHub) -> None:
    message = MESSAGE | {"timestamp": 1767323045000, "final": False}
    await router.handle("session/restore", body({"session": "office", "messages": [message]}))
    assert hub.calls[-1][2][0]["timestamp"] == "2026-01-02T03:04:05.000+00:00"


async def test_dismiss_add_remove_reload(router: Router, hub: FakeHub) -> None:
    hub.sessions["kitchen"]["error"] = {"kind": "connection", "message": "x", "at": None}
    dismissed = await router.handle("session/dismiss_error", body({"session": "kitchen"}))
    assert dismissed["data"] == {"session": "kitchen"}
    assert hub.sessions["kitchen"]["error"] is None
    request = {"session": "garage", "template": "assistant", "agent_name": "a"}
    added = await router.handle("session/add", body(request))
    assert added["status"] == "ok"
    table = {"template": "assistant", "agent_name": "a", "agent_metadata": None}
    assert ("add", "garage", table) in hub.calls
    removed = await router.handle("session/remove", body({"session": "garage"}))
    assert removed["data"] == {"session": "garage", "removed": True}
    assert (await router.handle("config/reload", b"{}"))["data"]["added"] == []


async def test_prepare_names_the_session_lane(router: Router) -> None:
    assert router.prepare("session/start", body({"session": "kitchen"})).session_id == "kitchen"
    assert router.prepare("health_check", b"").session_id is None
    assert router.prepare("session/start", b"[").session_id is None


# -- bad requests: every one answered with what was wrong -------------------------------------

BAD_REQUESTS: list[tuple[str, bytes, str]] = [
    ("session/start", b"{not json", "payload is not valid JSON (Expecting property name"),
    ("session/start", b"[1, 2]", "payload must be a JSON object, got array"),
    ("session/start", b'"kitchen"', "payload must be a JSON object, got string"),
    ("session/start", b"\xff\xfe", "payload is not valid UTF-8 (byte 0xff at position 0)"),
    ("session/start", b'{"session": "k\xc3"}', "payload is not valid UTF-8 (byte 0xc3 at position"),
    ("session/start", b"{}", "session: missing (session/start takes session, transaction)"),
    ("session/start", b"", "session: missing"),
    ("session/start", body({"session": 5}), "session: expected a string, got number"),
    ("session/start", body({"session": "Kitchen!"}), "session: session id must be 1 to 64 characters"),
    ("session/start", body({"session": "bridge"}), "session: session id 'bridge' is reserved"),
    ("session/start", body({"session": "nope"}), "unknown session 'nope'"),
    ("session/start", body({"session": "kitchen", "x": 1}), "unknown field 'x'; session/start"),
    ("session/send", body({"session": "kitchen"}), "text: missing"),
    ("session/send", body({"session": "kitchen", "text": 42}), "text: expected a string, got number"),
    ("session/send", body({"session": "kitchen", "text": True}), "text: expected a string, got boolean"),
    ("session/send", body({"session": "kitchen", "text": ""}), "nothing to send: the text is empty"),
    ("session/send", body({"session": "kitchen", "text": " \n"}), "nothing to send: the text is empty"),
    ("session/send", body({"session": "kitchen", "text": "a", "id": 3}), "id: expected a string, got number"),
    ("session/send", body({"session": "kitchen", "text": "a", "id": ""}), "id: must be 1 to 200 characters"),
    ("session/send", body({"session": "kitchen", "txt": "a"}), "unknown field 'txt'; session/send takes session, text, id, transaction"),
    ("session/restore", body({"session": "kitchen"}), "messages: missing"),
    ("session/restore", body({"session": "kitchen", "messages": {}}), "messages: expected an array, got object"),
    ("session/restore", body({"session": "kitchen", "messages": [1]}), "messages[0]: expected an object, got number"),
    ("session/restore", body({"session": "kitchen", "messages": [MESSAGE, {**MESSAGE, "type": "x"}]}), "messages[1]: type: must be one of agent_transcript, user_transcript, user_input, got 'x'"),
    ("session/restore", body({"session": "kitchen", "messages": [{**MESSAGE, "text": None}]}), "messages[0]: text: expected a string, got null"),
    ("session/restore", body({"session": "kitchen", "messages": [{k: v for k, v in MESSAGE.items() if k != "timestamp"}]}), "messages[0]: timestamp: missing"),
    ("session/restore", body({"session": "kitchen", "messages": [{**MESSAGE, "timestamp": "soon"}]}), "messages[0]: timestamp: not an ISO 8601 date-time"),
    ("session/restore", body({"session": "kitchen", "messages": [{**MESSAGE, "final": "yes"}]}), "messages[0]: final: expected true or false, got string"),
    ("session/restore", body({"session": "kitchen", "messages": [{**MESSAGE, "extra": 1}]}), "messages[0]: unknown field 'extra'"),
    ("session/add", body({"session": "garage"}), "template: missing"),
    ("session/add", body({"session": "garage", "template": 5}), "template: expected a string, got number"),
    ("session/add", body({"session": "garage", "template": "nope"}), "unknown template 'nope'"),
    ("session/add", body({"session": "kitchen", "template": "assistant"}), "already exists"),
    # 0.1's free-form session table (token source, secrets, transports) is refused outright.
    ("session/add", body({"session": "garage", "config": {"token": {}}}), "config: session/add no longer takes"),
    ("session/history", body({"session": "office", "limit": 0}), "limit: must be 1 to 200, got 0"),
    ("session/history", body({"session": "office", "before": "nope"}), "before: no message 'nope'"),
    ("session/remove", body({"session": "nope"}), "unknown session 'nope'"),
    ("health_check", body({"verbose": True}), "unknown field 'verbose'; health_check takes transaction"),
    ("session/explode", body({"session": "kitchen"}), "unknown action 'session/explode'; known actions: session/start,"),
    ("", b"{}", "unknown action ''"),
    ("session/start", b'{"session": "' + b"k" * 2000 + b'"}', "payload too large: 2015 bytes, over the limit of 1024 (mqtt.max_payload_bytes)"),
    ("session/start", b"[" * 100_000, "payload too large: 100000 bytes, over the limit"),
]  # fmt: skip


@pytest.mark.parametrize(("action", "payload", "error"), BAD_REQUESTS)
async def test_bad_requests_get_a_clear_error(
    router: Router, hub: FakeHub, action: str, payload: bytes, error: str
) -> None:
    response = await router.handle(action, payload)
    assert response["status"] == "error"
    assert error in response["error"], response["error"]
    assert [c for c in hub.calls if c[0] not in ("add",)] == []


async def test_deeply_nested_json_is_refused_not_crashing(hub: FakeHub) -> None:
    router = RouterUnderTest(hub, max_payload_bytes=1_000_000)
    response = await router.handle("session/start", b"[" * 100_000 + b"]" * 100_000)
    assert response["status"] == "error"
    assert "not valid JSON" in response["error"] or "must be a JSON object" in response["error"]


async def test_bad_requests_still_echo_the_transaction(router: Router) -> None:
    response = await router.handle("session/start", body({"transaction": "t1", "session": 3}))
    assert response == {
        "status": "error",
        "error": "session: expected a string, got number",
        "transaction": "t1",
    }
    response = await router.handle("nope", body({"transaction": "t2"}))
    assert response["transaction"] == "t2"


async def test_too_large_requests_still_echo_their_transaction(router: Router) -> None:
    big = body({"session": "kitchen", "text": "x" * 3000, "transaction": "t9"})
    response = await router.handle("session/send", big)
    assert response["transaction"] == "t9"
    assert response["error"].startswith("payload too large")
    huge = body({"session": "kitchen", "text": "x" * 20_000, "transaction": "t9"})
    assert "transaction" not in await router.handle("session/send", huge)


async def test_hub_errors_become_error_responses(router: Router, hub: FakeHub) -> None:
    hub.fail_with = HubError("lkbridge is shutting down")
    response = await router.handle("session/start", body({"session": "kitchen"}))
    assert response == {"status": "error", "error": "lkbridge is shutting down"}


async def test_unexpected_exceptions_do_not_escape(router: Router, hub: FakeHub) -> None:
    hub.fail_with = RuntimeError("boom")
    response = await router.handle("session/start", body({"session": "kitchen"}))
    assert response == {"status": "error", "error": "internal error: RuntimeError"}


async def test_expired_requests_are_not_carried_out(router: Router, hub: FakeHub) -> None:
    past = time.monotonic() - 0.001
    response = await router.handle("session/start", body({"session": "kitchen"}), deadline=past)
    assert response == {"status": "error", "error": EXPIRED}
    assert hub.calls == []
    future = time.monotonic() + 60
    response = await router.handle("session/start", body({"session": "kitchen"}), deadline=future)
    assert response["status"] == "ok"


# -- send and command topic payloads ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"hello there", SendPayload("hello there")),
        ("grüße 👋".encode(), SendPayload("grüße 👋")),
        (b'{"text": "hi"}', SendPayload("hi")),
        (b' {"text": "hi", "id": "abc"}', SendPayload("hi", "abc")),
        (b"{not json, so text", SendPayload("{not json, so text")),
        (b"[1, 2]", SendPayload("[1, 2]")),
        (b"42", SendPayload("42")),
    ],
)
def test_parse_send(payload: bytes, expected: SendPayload) -> None:
    assert parse_send(payload, 1024) == expected


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", "nothing to send: the text is empty"),
        (b"  \t ", "nothing to send: the text is empty"),
        (b"\xc3\x28", "payload is not valid UTF-8 (byte 0xc3 at position 0)"),
        (b"x" * 1025, "payload too large: 1025 bytes, over the limit of 1024"),
        (b'{"text": 1}', "text: expected a string, got number"),
        (b'{"id": "a"}', "text: missing"),
        (b'{"text": ""}', "nothing to send: the text is empty"),
        (b'{"text": "  "}', "nothing to send: the text is empty"),
        (b'{"text": "a", "id": 1}', "id: expected a string, got number"),
        (b'{"text": "a", "to": "b"}', "unknown field 'to'; the send topic takes text, id"),
    ],
)
def test_parse_send_errors(payload: bytes, error: str) -> None:
    with pytest.raises(BadPayload) as info:
        parse_send(payload, 1024)
    assert error in str(info.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"start", Command.START),
        (b"end\n", Command.END),
        (b"dismiss_error", Command.DISMISS_ERROR),
        (b'{"command": "start"}', Command.START),
    ],
)
def test_parse_command(payload: bytes, expected: Command) -> None:
    assert parse_command(payload, 1024) is expected


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"restart", "unknown command 'restart'; expected one of start, end, dismiss_error"),
        (b"START", "unknown command 'START'"),
        (b"", "unknown command ''"),
        (b'{"command": 1}', "command: expected a string, got number"),
        (b'{"cmd": "start"}', "unknown field 'cmd'; the command topic takes command"),
        (b"{}", "command: missing"),
        (b"{oops", "payload is not valid JSON"),
        (b"\xff", "payload is not valid UTF-8"),
    ],
)
def test_parse_command_errors(payload: bytes, error: str) -> None:
    with pytest.raises(BadPayload) as info:
        parse_command(payload, 1024)
    assert error in str(info.value)


def test_history_pages_walk_back_with_the_cursor() -> None:
    """0.1 answered session/history with one payload of any size (60 MB seen)."""
    messages = [MESSAGE | {"id": f"m{i}", "text": "x" * 1000} for i in range(500)]
    first = history_page("s", messages, None, None)
    assert [m["id"] for m in first["messages"]] == [f"m{i}" for i in range(450, 500)]
    assert first["next"] == "m450" and first["total"] == 500
    seen = list(first["messages"])
    cursor = first["next"]
    while cursor is not None:
        page = history_page("s", messages, 200, cursor)
        seen = page["messages"] + seen
        cursor = page["next"]
    assert seen == messages
    big = [MESSAGE | {"id": f"b{i}", "text": "y" * 20_000} for i in range(100)]
    page = history_page("s", big, 200, None)
    assert len(json.dumps(page)) <= HISTORY_PAGE_BYTES + 20_000
    assert page["messages"][-1]["id"] == "b99" and page["next"] == page["messages"][0]["id"]
    # the budget is bytes as published: 4-byte characters must not make a page 4 times larger
    wide = [MESSAGE | {"id": f"w{i}", "text": "\U0001f600" * 5_000} for i in range(100)]
    page = history_page("s", wide, 200, None)
    assert len(dumps(page)) <= HISTORY_PAGE_BYTES + 20_000
    assert page["messages"][-1]["id"] == "w99" and page["next"] == page["messages"][0]["id"]
