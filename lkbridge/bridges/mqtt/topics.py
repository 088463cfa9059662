"""MQTT topic names of the lkbridge contract: building them, parsing incoming ones, session ids."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lkbridge.config import schema
from lkbridge.config.schema import bridge_subscriptions
from lkbridge.mqtt.topic import base_topic_problem


class SessionLeaf(StrEnum):
    """The last level of a session topic `{base}/{session_id}/<leaf>`."""

    STATE = "state"
    CONNECTION_STATE = "connection_state"
    AGENT_STATE = "agent_state"
    AVAILABILITY = "availability"
    ERROR = "error"
    MESSAGE = "message"
    LAST_REPLY = "last_reply"
    EVENT = "event"
    SEND = "send"
    COMMAND = "command"


class Inbound(StrEnum):
    """What kind of topic an incoming message arrived on."""

    REQUEST = "request"
    SEND = "send"
    COMMAND = "command"
    HA_STATUS = "ha_status"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """An incoming topic: its kind and the action (requests) or session id (send/command)."""

    kind: Inbound
    action: str = ""
    session_id: str = ""


def session_id_problem(session_id: object) -> str | None:
    """Why session_id (decoded JSON) is not a valid session id, or None: the config's rule."""
    if not isinstance(session_id, str):
        return f"expected a string, got {json_type_name(session_id)}"
    return schema.session_id_problem(session_id)


def is_valid_session_id(session_id: object) -> bool:
    """True for ids of 1 to 64 characters from a-z, 0-9, _ and - that are not reserved."""
    return session_id_problem(session_id) is None


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Topics:
    """Every topic of one bridge, for a base topic and a Home Assistant discovery prefix."""

    __slots__ = (
        "_base_len",
        "_session_cache",
        "base",
        "bridge_event",
        "bridge_info",
        "bridge_state",
        "command_filter",
        "discovery_prefix",
        "ha_status",
        "request_filter",
        "request_prefix",
        "send_filter",
    )

    def __init__(self, base: str = "lkbridge", discovery_prefix: str = "homeassistant") -> None:
        problem = base_topic_problem(base)
        if problem:
            raise ValueError(f"mqtt.base_topic: {problem}")
        problem = base_topic_problem(discovery_prefix)
        if problem:
            raise ValueError(f"homeassistant.discovery_prefix: {problem}")
        self.base = base
        self.discovery_prefix = discovery_prefix
        self.bridge_state = f"{base}/bridge/state"
        self.bridge_info = f"{base}/bridge/info"
        self.bridge_event = f"{base}/bridge/event"
        self.request_prefix = f"{base}/bridge/request/"
        # Actions contain a slash (session/start), so requests need a multi-level wildcard.
        self.request_filter = f"{base}/bridge/request/#"
        self.send_filter = f"{base}/+/send"
        self.command_filter = f"{base}/+/command"
        self.ha_status = f"{discovery_prefix}/status"
        self._base_len = len(base) + 1
        self._session_cache: dict[tuple[str, SessionLeaf], str] = {}

    def subscriptions(self, *, homeassistant: bool) -> list[str]:
        """The topic filters the bridge subscribes to."""
        return bridge_subscriptions(self.base, self.discovery_prefix, homeassistant)

    def response(self, action: str) -> str:
        """`{base}/bridge/response/<action>`."""
        return f"{self.base}/bridge/response/{action}"

    def request(self, action: str) -> str:
        """`{base}/bridge/request/<action>`."""
        return f"{self.request_prefix}{action}"

    def session(self, session_id: str, leaf: SessionLeaf) -> str:
        """`{base}/{session_id}/<leaf>` (cached: these are built on the hot path)."""
        key = (session_id, leaf)
        topic = self._session_cache.get(key)
        if topic is None:
            topic = f"{self.base}/{session_id}/{leaf.value}"
            self._session_cache[key] = topic
        return topic

    def forget_session(self, session_id: str) -> None:
        """Drop cached topics of a removed session."""
        for leaf in SessionLeaf:
            self._session_cache.pop((session_id, leaf), None)

    def discovery(self, node_id: str) -> str:
        """`<prefix>/device/<node_id>/config` (Home Assistant device-based discovery)."""
        return f"{self.discovery_prefix}/device/{node_id}/config"

    def parse(self, topic: str) -> ParsedTopic | None:
        """Classify an incoming topic; None when it is not one the bridge acts on."""
        if topic == self.ha_status:
            return ParsedTopic(Inbound.HA_STATUS)
        if topic.startswith(self.request_prefix):
            return ParsedTopic(Inbound.REQUEST, action=topic[len(self.request_prefix) :])
        if not topic.startswith(self.base) or topic[self._base_len - 1 : self._base_len] != "/":
            return None
        rest = topic[self._base_len :]
        session_id, sep, leaf = rest.partition("/")
        if not sep:
            return None
        if leaf == SessionLeaf.SEND:
            return ParsedTopic(Inbound.SEND, session_id=session_id)
        if leaf == SessionLeaf.COMMAND:
            return ParsedTopic(Inbound.COMMAND, session_id=session_id)
        return None
