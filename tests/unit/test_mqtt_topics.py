"""Topic building and parsing of the MQTT contract, and session id rules."""

from __future__ import annotations

import pytest

from lkbridge.bridges.mqtt.topics import (
    Inbound,
    ParsedTopic,
    SessionLeaf,
    Topics,
    base_topic_problem,
    is_valid_session_id,
    json_type_name,
    session_id_problem,
)


def test_bridge_topics_follow_the_contract() -> None:
    t = Topics()
    assert t.bridge_state == "lkbridge/bridge/state"
    assert t.bridge_info == "lkbridge/bridge/info"
    assert t.bridge_event == "lkbridge/bridge/event"
    assert t.request("session/start") == "lkbridge/bridge/request/session/start"
    assert t.response("session/start") == "lkbridge/bridge/response/session/start"
    assert t.ha_status == "homeassistant/status"
    assert t.discovery("lkbridge_kitchen") == "homeassistant/device/lkbridge_kitchen/config"


@pytest.mark.parametrize("leaf", list(SessionLeaf))
def test_session_topics(leaf: SessionLeaf) -> None:
    assert Topics("home/lkb").session("kitchen", leaf) == f"home/lkb/kitchen/{leaf.value}"


def test_subscriptions_cover_requests_with_slashes() -> None:
    t = Topics("lkb", "ha")
    assert t.subscriptions(homeassistant=True) == [
        "lkb/bridge/request/#",
        "lkb/+/send",
        "lkb/+/command",
        "ha/status",
    ]
    assert "ha/status" not in t.subscriptions(homeassistant=False)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("lkb/bridge/request/session/start", ParsedTopic(Inbound.REQUEST, action="session/start")),
        ("lkb/bridge/request/health_check", ParsedTopic(Inbound.REQUEST, action="health_check")),
        ("lkb/kitchen/send", ParsedTopic(Inbound.SEND, session_id="kitchen")),
        ("lkb/kitchen/command", ParsedTopic(Inbound.COMMAND, session_id="kitchen")),
        ("lkb/Bad Id/send", ParsedTopic(Inbound.SEND, session_id="Bad Id")),
        ("homeassistant/status", ParsedTopic(Inbound.HA_STATUS)),
        ("lkb/kitchen/state", None),
        ("lkb/kitchen/deeper/send", None),
        ("lkbx/kitchen/send", None),
        ("other/kitchen/send", None),
        ("lkb", None),
        ("lkb/kitchen", None),
    ],
)
def test_parse(topic: str, expected: ParsedTopic | None) -> None:
    assert Topics("lkb").parse(topic) == expected


def test_parse_with_a_nested_base() -> None:
    t = Topics("site/a/lkbridge", "hass")
    assert t.parse("site/a/lkbridge/kitchen/send") == ParsedTopic(
        Inbound.SEND, session_id="kitchen"
    )
    assert t.parse("hass/status") == ParsedTopic(Inbound.HA_STATUS)
    assert t.parse("homeassistant/status") is None


def test_session_topics_are_cached_and_forgotten() -> None:
    t = Topics()
    first = t.session("kitchen", SessionLeaf.STATE)
    assert t.session("kitchen", SessionLeaf.STATE) is first
    t.forget_session("kitchen")
    assert t.session("kitchen", SessionLeaf.STATE) == first


@pytest.mark.parametrize("session_id", ["kitchen", "a", "x" * 64, "a-b_c9"])
def test_valid_session_ids(session_id: str) -> None:
    assert is_valid_session_id(session_id)
    assert session_id_problem(session_id) is None


@pytest.mark.parametrize(
    ("session_id", "problem"),
    [
        ("", "session id must be 1 to 64 characters from a-z, 0-9, _ and -"),
        ("x" * 65, "1 to 64 characters"),
        ("Kitchen", "1 to 64 characters"),
        ("a/b", "1 to 64 characters"),
        ("a+", "1 to 64 characters"),
        ("bridge", "reserved"),
        (7, "expected a string, got number"),
        (None, "expected a string, got null"),
    ],
)
def test_invalid_session_ids(session_id: object, problem: str) -> None:
    assert not is_valid_session_id(session_id)
    assert problem in (session_id_problem(session_id) or "")


@pytest.mark.parametrize("base", ["", "/lkb", "lkb/", "a//b", "a/+/b", "a/#", "$SYS/x"])
def test_bad_base_topics_are_refused(base: str) -> None:
    assert base_topic_problem(base)
    with pytest.raises(ValueError, match=r"mqtt\.base_topic"):
        Topics(base)


def test_bad_discovery_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match=r"homeassistant\.discovery_prefix"):
        Topics("lkb", "ha/#")


@pytest.mark.parametrize(
    ("value", "name"),
    [(None, "null"), (True, "boolean"), (1, "number"), (1.5, "number"), ("", "string"),
     ([], "array"), ({}, "object")],
)  # fmt: skip
def test_json_type_names(value: object, name: str) -> None:
    assert json_type_name(value) == name
