"""Home Assistant MQTT discovery: a device per session, linked to a bridge device."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from lkbridge import __version__
from lkbridge.bridges.mqtt.router import Command
from lkbridge.bridges.mqtt.topics import SessionLeaf, Topics
from lkbridge.messages import MessageType
from lkbridge.session.agent import AgentLifecycle, AgentState

ORIGIN_NAME = "lkbridge"
SUPPORT_URL = "https://github.com/lkbridge/lkbridge"
"""Where Home Assistant's origin info points users for help (shown in HA's logs)."""

STATE_MAX_LENGTH = 255
"""Home Assistant caps entity states at 255 characters."""

AGENT_STATE_OPTIONS: tuple[str, ...] = (
    AgentLifecycle.DISCONNECTED.value,
    AgentLifecycle.CONNECTING.value,
    AgentLifecycle.CONNECTED.value,
    AgentLifecycle.FAILED.value,
    *(state.value for state in AgentState),
)
"""Every value the `agent_state` topic can carry (see agent_display_state)."""

EVENT_TYPES: tuple[str, ...] = tuple(t.value for t in MessageType)

NO_ERROR = "OK"
"""The error sensor's state when there is no error (HA would show `None` as unknown)."""

BRIDGE_EVENT_TYPES: tuple[str, ...] = (
    "send_failed",
    "command_failed",
    "bad_payload",
    "session_added",
    "session_removed",
    "config_reloaded",
    "config_reload_failed",
    "other",
)
"""Event types of the bridge device's event entity; any other bridge event fires as `other`."""

_AGENT_STATES = frozenset(state.value for state in AgentState)
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def agent_display_state(agent: Mapping[str, Any] | None) -> str:
    """One word for the agent, always one of AGENT_STATE_OPTIONS.

    failed > the agent's own state (when connected and known) > the lifecycle; anything
    unexpected reads as disconnected, so the Home Assistant enum sensor never gets a stray value.
    """
    if not agent:
        return AgentLifecycle.DISCONNECTED.value
    lifecycle = agent.get("lifecycle")
    if lifecycle == AgentLifecycle.FAILED:
        return AgentLifecycle.FAILED.value
    if lifecycle == AgentLifecycle.CONNECTED:
        state = agent.get("state")
        return state if state in _AGENT_STATES else AgentLifecycle.CONNECTED.value
    if lifecycle == AgentLifecycle.CONNECTING:
        return AgentLifecycle.CONNECTING.value
    return AgentLifecycle.DISCONNECTED.value


def base_node_id(base: str) -> str:
    """The base topic made safe for a discovery node id ([A-Za-z0-9_-]).

    A base that is already safe is used as it is; any other gets a short hash of the base
    appended, so that bases which differ only in unsafe characters (`home/lkb`, `home_lkb`,
    `home.lkb`) never share a node id (and Home Assistant devices).
    """
    safe = _NODE_UNSAFE.sub("_", base)
    if safe == base:
        return base
    return f"{safe}_{hashlib.sha256(base.encode()).hexdigest()[:6]}"


def bridge_node_id(topics: Topics) -> str:
    """Node id and device identifier of the bridge device: `<base>_bridge`."""
    return f"{base_node_id(topics.base)}_bridge"


def session_node_id(topics: Topics, session_id: str) -> str:
    """Node id and device identifier of a session device: `<base>_<session_id>`.

    "bridge" is never a session id, so the two kinds cannot collide.
    """
    return f"{base_node_id(topics.base)}_{session_id}"


def _origin() -> dict[str, Any]:
    return {"name": ORIGIN_NAME, "sw_version": __version__, "support_url": SUPPORT_URL}


def _bridge_availability(topics: Topics) -> dict[str, Any]:
    return {
        "topic": topics.bridge_state,
        "value_template": "{{ value_json.state }}",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def bridge_name(topics: Topics, configured: str | None = None) -> str:
    """The bridge device's name: `[homeassistant] name`, else lkbridge (plus a non-default base)."""
    if configured:
        return configured
    return "lkbridge" if topics.base == "lkbridge" else f"lkbridge {topics.base}"


def bridge_device_config(topics: Topics, name: str | None = None) -> dict[str, Any]:
    """The bridge device: its connectivity, a config reload button and its events."""
    node = bridge_node_id(topics)
    name = bridge_name(topics, name)
    known = ", ".join(repr(t) for t in BRIDGE_EVENT_TYPES if t != "other")
    return {
        "device": {
            "identifiers": [node],
            "name": name,
            "manufacturer": "lkbridge",
            "model": "lkbridge daemon",
            "sw_version": __version__,
        },
        "origin": _origin(),
        "components": {
            "connectivity": {
                "platform": "binary_sensor",
                "unique_id": f"{node}_connectivity",
                "name": "Connectivity",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "state_topic": topics.bridge_state,
                "value_template": "{{ value_json.state }}",
                "payload_on": "online",
                "payload_off": "offline",
                "qos": 1,
            },
            "reload": {
                "platform": "button",
                "unique_id": f"{node}_reload",
                "name": "Reload configuration",
                "entity_category": "config",
                "command_topic": topics.request("config/reload"),
                "payload_press": "{}",
                "availability": [_bridge_availability(topics)],
                "icon": "mdi:reload",
                "qos": 1,
            },
            "events": {
                "platform": "event",
                "unique_id": f"{node}_events",
                "name": "Events",
                "entity_category": "diagnostic",
                "state_topic": topics.bridge_event,
                "event_types": list(BRIDGE_EVENT_TYPES),
                # Every field of the event becomes event data (session, topic, error...).
                "value_template": (
                    "{% set kind = value_json.get('event') %}"
                    f"{{{{ dict(value_json, event_type=(kind if kind in [{known}] else 'other'))"
                    " | to_json }}"
                ),
                "availability": [_bridge_availability(topics)],
                "icon": "mdi:bell-outline",
                "qos": 1,
            },
        },
    }


def session_device_config(
    topics: Topics, session_id: str, name: str | None = None
) -> dict[str, Any]:
    """The device of one session, with every entity wired to the session's own topics.

    Its name is "<bridge name> <session id>", so the same session id on two daemons (different
    base topics) gives two devices a user can tell apart.
    """
    node = session_node_id(topics, session_id)

    def topic(leaf: SessionLeaf) -> str:
        return topics.session(session_id, leaf)

    def entity(key: str, platform: str, name: str, **options: Any) -> dict[str, Any]:
        return {
            "platform": platform,
            "unique_id": f"{node}_{key}",
            "name": name,
            **options,
            "qos": 1,
        }

    components = {
        "agent_state": entity(
            "agent_state",
            "sensor",
            "Agent state",
            device_class="enum",
            options=list(AGENT_STATE_OPTIONS),
            state_topic=topic(SessionLeaf.AGENT_STATE),
            icon="mdi:robot",
        ),
        "connectivity": entity(
            "connectivity",
            "binary_sensor",
            "Room connectivity",
            device_class="connectivity",
            state_topic=topic(SessionLeaf.CONNECTION_STATE),
            value_template="{{ 'ON' if value == 'connected' else 'OFF' }}",
            payload_on="ON",
            payload_off="OFF",
        ),
        # The agent's last finished reply: a retained topic of its own, written once per reply
        # (never for partial text nor the user's own), so it survives an HA restart.
        "last_message": entity(
            "last_message",
            "sensor",
            "Last reply",
            state_topic=topic(SessionLeaf.LAST_REPLY),
            value_template=f"{{{{ value_json.text[:{STATE_MAX_LENGTH}] }}}}",
            json_attributes_topic=topic(SessionLeaf.LAST_REPLY),
            icon="mdi:message-reply-text",
        ),
        "message": entity(
            "message",
            "event",
            "Messages",
            state_topic=topic(SessionLeaf.MESSAGE),
            event_types=list(EVENT_TYPES),
            # Fires once per finished message; interim updates render empty, which HA ignores.
            value_template=(
                "{% if value_json.final %}"
                "{{ {'event_type': value_json.type, 'id': value_json.id,"
                " 'text': value_json.text, 'timestamp': value_json.timestamp,"
                " 'session': value_json.session,"
                " 'reply_to': value_json.get('reply_to'),"
                " 'conversation_id': value_json.get('conversation_id')} | to_json }}"
                "{% endif %}"
            ),
            icon="mdi:message-text-outline",
        ),
        "send": entity(
            "send",
            "notify",
            "Send",
            command_topic=topic(SessionLeaf.SEND),
            icon="mdi:message-arrow-right",
        ),
        "text": entity(
            "text",
            "text",
            "Send text",
            command_topic=topic(SessionLeaf.SEND),
            min=1,  # HA itself refuses an empty text, with a message the user sees
            max=STATE_MAX_LENGTH,
            mode="text",
            icon="mdi:keyboard",
        ),
        "error": entity(
            "error",
            "sensor",
            "Error",
            entity_category="diagnostic",
            state_topic=topic(SessionLeaf.STATE),
            # Written so that no variable is ever undefined (HA logs a warning for each).
            value_template=(
                "{% set error = value_json.get('error') %}"
                f"{{{{ error.get('message', 'error')[:{STATE_MAX_LENGTH}] if error"
                f" else '{NO_ERROR}' }}}}"
            ),
            json_attributes_topic=topic(SessionLeaf.STATE),
            json_attributes_template="{{ (value_json.get('error') or {}) | to_json }}",
            icon="mdi:alert-circle-outline",
        ),
        "problem": entity(
            "problem",
            "binary_sensor",
            "Problem",
            device_class="problem",
            entity_category="diagnostic",
            state_topic=topic(SessionLeaf.STATE),
            value_template="{{ 'ON' if value_json.get('error') else 'OFF' }}",
            payload_on="ON",
            payload_off="OFF",
        ),
    }
    for command, label, icon, category in (
        (Command.START, "Start", "mdi:play", None),
        (Command.END, "End", "mdi:stop", None),
        (Command.DISMISS_ERROR, "Dismiss error", "mdi:close-circle-outline", "config"),
    ):
        options: dict[str, Any] = {"icon": icon}
        if category is not None:
            options["entity_category"] = category
        components[command.value] = entity(
            command.value,
            "button",
            label,
            command_topic=topic(SessionLeaf.COMMAND),
            payload_press=command.value,
            **options,
        )
    return {
        "device": {
            "identifiers": [node],
            "name": f"{bridge_name(topics, name)} {session_id}",
            "manufacturer": "lkbridge",
            "model": "LiveKit agent session",
            "sw_version": __version__,
            "via_device": bridge_node_id(topics),
        },
        "origin": _origin(),
        "availability": [
            _bridge_availability(topics),
            {
                "topic": topic(SessionLeaf.AVAILABILITY),
                "payload_available": "online",
                "payload_not_available": "offline",
            },
        ],
        "availability_mode": "all",
        "components": components,
    }


def discovery_messages(
    topics: Topics, session_ids: list[str], name: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(topic, payload) of the bridge device first, then one per session."""
    messages = [(topics.discovery(bridge_node_id(topics)), bridge_device_config(topics, name))]
    for session_id in session_ids:
        messages.append(
            (
                topics.discovery(session_node_id(topics, session_id)),
                session_device_config(topics, session_id, name),
            )
        )
    return messages


def removal_topic(topics: Topics, session_id: str) -> str:
    """Where an empty retained payload removes a session's device from Home Assistant."""
    return topics.discovery(session_node_id(topics, session_id))
