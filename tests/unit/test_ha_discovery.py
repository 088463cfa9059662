"""Home Assistant discovery payloads: required keys, full key names, wiring to real topics."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from lkbridge.bridges.mqtt.discovery import (
    AGENT_STATE_OPTIONS,
    EVENT_TYPES,
    STATE_MAX_LENGTH,
    agent_display_state,
    bridge_device_config,
    bridge_node_id,
    discovery_messages,
    removal_topic,
    session_device_config,
    session_node_id,
)
from lkbridge.bridges.mqtt.router import SPECS, Command, parse_command, parse_send
from lkbridge.bridges.mqtt.topics import Inbound, SessionLeaf, Topics
from lkbridge.messages import MessageType
from lkbridge.session.agent import Agent, AgentFailure, AgentLifecycle, AgentState

# Every abbreviation Home Assistant expands that could appear in what we publish: using none of
# them (full names throughout) is the consistency issue 6 asks for.
ABBREVIATIONS = {
    "p", "dev", "o", "cmps", "uniq_id", "stat_t", "cmd_t", "avty", "avty_t", "avty_mode",
    "avty_tpl", "val_tpl", "json_attr_t", "json_attr_tpl", "dev_cla", "ent_cat", "pl_prs",
    "pl_on", "pl_off", "pl_avail", "pl_not_avail", "evt_typ", "ops", "ic", "t", "ids", "sw",
    "url", "via_dev", "mf", "mdl", "name_", "qos_",
}  # fmt: skip
PLATFORMS = {"sensor", "binary_sensor", "event", "notify", "text", "button"}
TOPICS = Topics("home/lkbridge", "homeassistant")


def all_keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        keys = set(value)
        for child in value.values():
            keys |= all_keys(child)
        return keys
    if isinstance(value, list):
        return set().union(*(all_keys(v) for v in value)) if value else set()
    return set()


@pytest.fixture
def session_config() -> dict[str, Any]:
    return session_device_config(TOPICS, "kitchen")


def test_device_and_origin(session_config: dict[str, Any]) -> None:
    device = session_config["device"]
    assert device["identifiers"] == ["home_lkbridge_aa9416_kitchen"]
    assert device["name"] == "lkbridge home/lkbridge kitchen"
    assert device["via_device"] == bridge_node_id(TOPICS) == "home_lkbridge_aa9416_bridge"
    assert bridge_device_config(TOPICS)["device"]["identifiers"] == [device["via_device"]]
    for config in (session_config, bridge_device_config(TOPICS)):
        origin = config["origin"]
        assert origin["name"] == "lkbridge"
        assert origin["sw_version"]
        assert origin["support_url"].startswith("https://")


def test_full_key_names_only(session_config: dict[str, Any]) -> None:
    for config in (session_config, bridge_device_config(TOPICS)):
        assert not all_keys(config) & ABBREVIATIONS
        assert set(config) >= {"device", "origin", "components"}


def test_every_component_has_the_required_keys(session_config: dict[str, Any]) -> None:
    unique_ids: list[str] = []
    for config in (session_config, bridge_device_config(TOPICS)):
        for key, component in config["components"].items():
            assert component["platform"] in PLATFORMS, key
            assert component["name"], key
            assert component["qos"] == 1, key
            unique_ids.append(component["unique_id"])
            assert component["unique_id"].startswith("home_lkbridge_aa9416_"), key
            if component["platform"] in ("sensor", "binary_sensor", "event"):
                assert "state_topic" in component, key
            if component["platform"] in ("notify", "text", "button"):
                assert "command_topic" in component, key
    assert len(unique_ids) == len(set(unique_ids))


def test_the_entities_issue_6_asks_for(session_config: dict[str, Any]) -> None:
    by_platform: dict[str, list[str]] = {}
    for key, component in session_config["components"].items():
        by_platform.setdefault(component["platform"], []).append(key)
    assert by_platform == {
        "sensor": ["agent_state", "last_message", "error"],
        "binary_sensor": ["connectivity", "problem"],
        "event": ["message"],
        "notify": ["send"],
        "text": ["text"],
        "button": ["start", "end", "dismiss_error"],
    }
    components = session_config["components"]
    assert components["connectivity"]["device_class"] == "connectivity"
    assert components["agent_state"]["device_class"] == "enum"
    assert components["message"]["event_types"] == [t.value for t in MessageType]
    assert list(EVENT_TYPES) == ["agent_transcript", "user_transcript", "user_input"]
    assert components["text"]["max"] == STATE_MAX_LENGTH == 255


def test_state_topics_are_real_lkbridge_topics(session_config: dict[str, Any]) -> None:
    published = {TOPICS.session("kitchen", leaf) for leaf in SessionLeaf} - {
        TOPICS.session("kitchen", SessionLeaf.SEND),
        TOPICS.session("kitchen", SessionLeaf.COMMAND),
    }
    for key, component in session_config["components"].items():
        for option in ("state_topic", "json_attributes_topic"):
            if option in component:
                assert component[option] in published, (key, option)
    bridge = bridge_device_config(TOPICS)["components"]["connectivity"]
    assert bridge["state_topic"] == TOPICS.bridge_state


def test_every_command_topic_is_wired_to_a_real_command(session_config: dict[str, Any]) -> None:
    """Each command topic is one the bridge subscribes to, with a payload it accepts."""
    wired = 0
    for config in (session_config, bridge_device_config(TOPICS)):
        for key, component in config["components"].items():
            if "command_topic" not in component:
                continue
            parsed = TOPICS.parse(component["command_topic"])
            assert parsed is not None, key
            if component["platform"] == "button":
                press = component["payload_press"].encode()
                if parsed.kind is Inbound.COMMAND:
                    assert parsed.session_id == "kitchen"
                    assert parse_command(press, 1024) is Command(key)
                else:
                    assert parsed.kind is Inbound.REQUEST
                    assert parsed.action in SPECS
                    assert json.loads(press) == {}
            else:  # notify and text publish the raw text the user typed
                assert parsed.kind is Inbound.SEND and parsed.session_id == "kitchen", key
                assert parse_send(b"turn the lights on", 1024).text == "turn the lights on"
            wired += 1
    assert wired == 6  # notify, text, start, end, dismiss_error, bridge reload


def test_availability_follows_the_bridge_and_the_session(session_config: dict[str, Any]) -> None:
    assert session_config["availability_mode"] == "all"
    availability = session_config["availability"]
    assert [a["topic"] for a in availability] == [
        "home/lkbridge/bridge/state",
        "home/lkbridge/kitchen/availability",
    ]
    assert availability[0]["value_template"] == "{{ value_json.state }}"
    for entry in availability:
        assert (entry["payload_available"], entry["payload_not_available"]) == ("online", "offline")


def test_agent_state_options_cover_every_possible_value() -> None:
    assert len(set(AGENT_STATE_OPTIONS)) == len(AGENT_STATE_OPTIONS) == 9
    lifecycles: list[Any] = [*AgentLifecycle, "weird", None, 3]
    states: list[Any] = [*AgentState, "pre-connect-buffering", None]
    for lifecycle, state in itertools.product(lifecycles, states):
        agent = {"lifecycle": lifecycle, "state": state}
        assert agent_display_state(agent) in AGENT_STATE_OPTIONS, agent
    assert agent_display_state(None) == "disconnected"
    assert agent_display_state({}) == "disconnected"


@pytest.mark.parametrize(
    ("agent", "expected"),
    [
        (Agent.disconnected(), "disconnected"),
        (Agent.connecting(), "connecting"),
        (Agent.connected("a", None), "connected"),
        (Agent.connected("a", AgentState.SPEAKING), "speaking"),
        (Agent.connected("a", AgentState.INITIALIZING), "initializing"),
        (Agent.connected("a", AgentState.LISTENING).failed(AgentFailure.TIMEOUT), "failed"),
    ],
)
def test_agent_display_state_from_real_agents(agent: Agent, expected: str) -> None:
    assert agent_display_state(agent.to_dict()) == expected


def test_discovery_messages_and_removal() -> None:
    messages = discovery_messages(TOPICS, ["kitchen", "office"])
    assert [topic for topic, _ in messages] == [
        "homeassistant/device/home_lkbridge_aa9416_bridge/config",
        "homeassistant/device/home_lkbridge_aa9416_kitchen/config",
        "homeassistant/device/home_lkbridge_aa9416_office/config",
    ]
    assert removal_topic(TOPICS, "kitchen") == messages[1][0]
    assert session_node_id(TOPICS, "kitchen") == "home_lkbridge_aa9416_kitchen"


def test_two_base_topics_never_collide() -> None:
    a = session_device_config(Topics("lkbridge"), "kitchen")
    b = session_device_config(Topics("lkbridge2"), "kitchen")
    ids_a = {c["unique_id"] for c in a["components"].values()} | set(a["device"]["identifiers"])
    ids_b = {c["unique_id"] for c in b["components"].values()} | set(b["device"]["identifiers"])
    assert not ids_a & ids_b


# -- the value templates, rendered the way Home Assistant renders them -------------------------


def render(template: str, payload: str) -> str:
    """Render like HA's MQTT value templates: `value` and `value_json`, strict about undefined."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = lambda v: json.dumps(v, ensure_ascii=False)
    variables: dict[str, Any] = {"value": payload}
    try:
        variables["value_json"] = json.loads(payload)
    except ValueError:
        pass
    return str(env.from_string(template).render(**variables))


def message(text: str, final: bool, kind: str = "agent_transcript") -> str:
    return json.dumps(
        {"id": "m1", "timestamp": "2026-01-01T00:00:00.000+00:00", "type": kind, "text": text,
         "final": final, "session": "kitchen"}
    )  # fmt: skip


def test_last_message_state_is_capped_and_attributes_keep_everything(
    session_config: dict[str, Any],
) -> None:
    component = session_config["components"]["last_message"]
    # Only finished agent replies reach this retained topic (not partials, not the user's text).
    assert component["state_topic"] == "home/lkbridge/kitchen/last_reply"
    assert component["name"] == "Last reply"
    long_text = "word " * 200
    assert render(component["value_template"], message(long_text, True)) == long_text[:255]
    assert render(component["value_template"], message("hi", False)) == "hi"
    assert component["json_attributes_topic"] == component["state_topic"]  # full text there


def test_message_event_fires_for_finished_messages_only(session_config: dict[str, Any]) -> None:
    template = session_config["components"]["message"]["value_template"]
    assert render(template, message("partial", False)) == ""  # HA ignores an empty rendering
    for kind in EVENT_TYPES:
        fired = json.loads(render(template, message('say "hi"', True, kind)))
        assert fired["event_type"] == kind
        assert fired["text"] == 'say "hi"'
        assert fired["event_type"] in session_config["components"]["message"]["event_types"]
        assert fired["reply_to"] is None and fired["conversation_id"] is None
    answer = json.loads(message("It is noon", True)) | {"reply_to": "q1", "conversation_id": "c1"}
    fired = json.loads(render(template, json.dumps(answer)))
    assert (fired["reply_to"], fired["conversation_id"], fired["id"]) == ("q1", "c1", "m1")


def test_error_sensor(session_config: dict[str, Any]) -> None:
    component = session_config["components"]["error"]
    no_error = json.dumps({"connection_state": "connected", "error": None})
    assert render(component["value_template"], no_error) == "OK"
    assert json.loads(render(component["json_attributes_template"], no_error)) == {}
    error = {"kind": "connection", "message": "Connection failed: " + "x" * 300, "at": None}
    with_error = json.dumps({"error": error})
    assert render(component["value_template"], with_error) == error["message"][:255]
    assert json.loads(render(component["json_attributes_template"], with_error)) == error
    assert render(component["value_template"], "{}") == "OK"
    problem = session_config["components"]["problem"]
    assert problem["device_class"] == "problem" and problem["state_topic"] == component["state_topic"]
    assert render(problem["value_template"], no_error) == problem["payload_off"]
    assert render(problem["value_template"], with_error) == problem["payload_on"]


def test_icons_and_categories(session_config: dict[str, Any]) -> None:
    components = session_config["components"]
    for key in ("start", "end", "send", "text", "message", "dismiss_error", "last_message"):
        assert components[key]["icon"].startswith("mdi:"), key
    assert components["dismiss_error"]["entity_category"] == "config"
    assert "entity_category" not in components["start"] and "entity_category" not in components["end"]
    assert components["text"]["min"] == 1  # HA refuses an empty text in its own UI


def test_two_daemons_with_the_same_session_id_have_distinct_device_names() -> None:
    default = session_device_config(Topics("lkbridge"), "demo")
    other = session_device_config(Topics("upstairs"), "demo")
    named = session_device_config(Topics("pi3"), "demo", "Garage Pi")
    assert default["device"]["name"] == "lkbridge demo"  # unchanged for the default base topic
    assert other["device"]["name"] == "lkbridge upstairs demo"
    assert named["device"]["name"] == "Garage Pi demo"
    assert bridge_device_config(Topics("pi3"), "Garage Pi")["device"]["name"] == "Garage Pi"
    assert [c["device"]["name"] for _, c in discovery_messages(Topics("pi3"), ["demo"], "G")] == [
        "G", "G demo",
    ]  # fmt: skip


def test_bridge_events_fire_with_their_data() -> None:
    component = bridge_device_config(TOPICS)["components"]["events"]
    assert component["state_topic"] == TOPICS.bridge_event
    failed = {"event": "send_failed", "topic": "t", "session": "kitchen", "error": "nothing"}
    fired = json.loads(render(component["value_template"], json.dumps(failed)))
    assert fired == failed | {"event_type": "send_failed"}
    odd = json.loads(render(component["value_template"], json.dumps({"event": "plugin_failed"})))
    assert odd["event_type"] == "other" and odd["event_type"] in component["event_types"]


@pytest.mark.parametrize(
    ("connection_state", "expected"),
    [("connected", "ON"), ("connecting", "OFF"), ("reconnecting", "OFF"), ("disconnected", "OFF")],
)
def test_connectivity_template(
    session_config: dict[str, Any], connection_state: str, expected: str
) -> None:
    component = session_config["components"]["connectivity"]
    assert render(component["value_template"], connection_state) == expected
    assert expected in (component["payload_on"], component["payload_off"])


def test_bridge_availability_template() -> None:
    config = bridge_device_config(TOPICS)
    template = config["components"]["connectivity"]["value_template"]
    assert render(template, '{"state":"online"}') == "online"
    assert render(template, '{"state":"offline"}') == "offline"


def test_bases_differing_only_in_unsafe_characters_get_distinct_node_ids() -> None:
    """docs/mqtt.md promises that two daemons with different base topics never collide."""
    bases = ["home/lkb", "home_lkb", "home.lkb", "home lkb", "lkbridge"]
    ids = {bridge_node_id(Topics(base, "homeassistant")) for base in bases}
    assert len(ids) == len(bases)
    assert bridge_node_id(Topics("lkbridge", "homeassistant")) == "lkbridge_bridge"  # unchanged
    assert bridge_node_id(Topics("home_lkb", "homeassistant")) == "home_lkb_bridge"
