"""Log events as a person reads them on a terminal: one line each, in words, with the session."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from structlog.typing import EventDict, WrappedLogger

__all__ = ["describe_event", "render_console"]

Phrase = Callable[[dict[str, Any]], str]


def _pop(fields: dict[str, Any], *keys: str) -> list[Any]:
    return [fields.pop(key, None) for key in keys]


def _connection(fields: dict[str, Any]) -> str:
    state, _ = _pop(fields, "state", "previous")
    return {
        "connecting": "connecting to LiveKit",
        "connected": "connected to LiveKit",
        "reconnecting": "reconnecting to LiveKit",
        "disconnected": "disconnected from LiveKit",
    }.get(str(state), f"connection {state}")


def _agent(fields: dict[str, Any]) -> str:
    lifecycle, state, identity, failure = _pop(fields, "lifecycle", "state", "identity", "failure")
    who = f"agent {identity}" if identity else "agent"
    if lifecycle == "connected":
        return f"{who} is {state}" if state else f"{who} joined"
    if lifecycle == "connecting":
        return "waiting for the agent"
    if lifecycle == "failed":
        return f"{who} failed ({failure})" if failure else f"{who} failed"
    return "no agent"


def _template(text: str, *keys: str) -> Phrase:
    def phrase(fields: dict[str, Any]) -> str:
        values = dict(zip(keys, _pop(fields, *keys), strict=True))
        return text.format(**{k: ("?" if v is None else v) for k, v in values.items()})

    return phrase


def _stopped(fields: dict[str, Any]) -> str:
    (unsent,) = _pop(fields, "unsent")
    return f"stopped ({unsent} message(s) unsent)" if unsent else "stopped"


# Event names (snake_case, past tense) in words; the fields a phrase uses are not repeated.
PHRASES: Mapping[str, Phrase] = {
    "session_connection_state_changed": _connection,
    "session_agent_changed": _agent,
    "session_started": _template("joined room {room} as {identity}", "room", "identity"),
    "session_ended": _template("ended"),
    "session_closed": _template("closed"),
    "session_error_set": _template("error ({kind}): {error}", "kind", "error"),
    "session_disconnected_unexpectedly": _template("disconnected unexpectedly ({reason})",
                                                   "reason"),
    "session_restart_scheduled": _template("restarting in {delay} s ({reason})", "delay",
                                           "reason"),
    "session_added": _template("added"),
    "session_removed": _template("removed"),
    "session_not_built": _template("cannot be built: {reason}", "reason"),
    "agent_timed_out": _template("no agent joined within {timeout} s", "timeout"),
    "message_history_restored": _template("{count} message(s) restored from history", "count"),
    "message_send_failed": _template("a message could not be sent: {error}", "error"),
    "daemon_ready": _template("ready: {sessions} session(s)", "sessions"),
    "daemon_stopping": _template("stopping"),
    "daemon_stopped": _stopped,
    "config_reloaded": _template("configuration reloaded"),
    "config_reload_failed": _template("configuration not reloaded: {reason}", "reason"),
    "bridge_started": _template("bridge {bridge} started", "bridge"),
    "bridge_failed": _template("bridge {bridge} failed: {error}", "bridge", "error"),
    "mqtt_connected": _template("MQTT connected to {host}:{port}", "host", "port"),
    "mqtt_connect_failed": _template("MQTT broker {host}:{port} unreachable: {error}", "host",
                                     "port", "error"),
    "mqtt_disconnected": _template("MQTT disconnected from {host}: {reason}", "host", "reason"),
    "mqtt_closed": _template("MQTT closed ({unsent} message(s) unsent)", "unsent"),
    "plugin_disabled": _template("plugin {plugin} disabled", "plugin"),
    "python_warning": _template("{category}: {message}", "category", "message"),
}

# Structure that is already in the line, or says nothing to a reader.
_HIDDEN = ("event", "level", "logger", "timestamp", "session")


def describe_event(event: str, fields: dict[str, Any], *, in_session: bool) -> str:
    """The event in words; the fields the words use are removed from `fields`."""
    phrase = PHRASES.get(event)
    if phrase is not None:
        return phrase(fields)
    words = event
    if in_session and words.startswith("session_"):
        words = words[len("session_"):]
    return words.replace("_", " ") if " " not in words else words


# Control characters in a value (a newline, ESC, ...) are shown escaped: a text from a peer can
# neither start a line that looks like lkbridge's nor send escape sequences to the terminal.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def _value(value: Any) -> str:
    text = str(value)
    return repr(text) if (" " in text or not text) and not isinstance(value, int | float) else text


def render_console(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> str:
    """structlog renderer: 'HH:MM:SS WARNING session kitchen: agent is listening  room=r1'."""
    fields = dict(event_dict)
    level = str(fields.get("level", method_name)).upper()
    stamp = str(fields.get("timestamp", ""))
    clock = stamp[11:19] if len(stamp) >= 19 else stamp
    session = fields.get("session")
    logger_name = str(fields.get("logger", ""))
    exception = fields.pop("exception", None)
    sentence = describe_event(str(fields.get("event", "")), fields, in_session=bool(session))
    parts = [clock] if clock else []
    if level != "INFO":
        parts.append(level)
    if session:
        parts.append(f"session {session}:")
    elif logger_name and not logger_name.startswith("lkbridge"):
        parts.append(f"{logger_name}:")
    parts.append(sentence)
    extra = [f"{k}={_value(v)}" for k, v in fields.items() if k not in _HIDDEN]
    line = (" ".join(parts) + ("  " + " ".join(extra) if extra else "")).translate(_CONTROL)
    return f"{line}\n{exception}" if exception else line
