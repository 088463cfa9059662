"""Request routing and payload checks: payload bytes in, hub calls and response dicts out."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lkbridge.bridges.hub import Hub, HubError
from lkbridge.bridges.mqtt.topics import json_type_name, session_id_problem
from lkbridge.config.models import ALL_ACTIONS, ControlConfig
from lkbridge.log import get_logger
from lkbridge.messages import ReceivedMessage

log = get_logger(__name__)

MAX_SEND_ID_LENGTH = 200


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON (values JSON cannot hold are written as their str())."""
    return _encode(data).encode()


class BadPayload(ValueError):
    """A payload could not be used; str() says what was wrong, for the sender."""


class EmptyText(BadPayload):
    """Text to send that is empty or only white space: nothing the agent could answer."""

    def __init__(self) -> None:
        super().__init__(EMPTY_TEXT)


EMPTY_TEXT = "nothing to send: the text is empty"


class Command(StrEnum):
    """What the `{base}/{id}/command` topic accepts."""

    START = "start"
    END = "end"
    DISMISS_ERROR = "dismiss_error"


@dataclass(frozen=True, slots=True)
class SendPayload:
    """A parsed `send` payload: the text and an optional idempotency key."""

    text: str
    send_id: str | None = None


_Kind = type | tuple[type, ...]
_KIND_NAMES: dict[_Kind, str] = {
    str: "a string",
    list: "an array",
    dict: "an object",
    bool: "true or false",
    (str, int, float): "a string or a number",
    (str, type(None)): "a string or null",
}


@dataclass(frozen=True, slots=True)
class _Spec:
    """The fields of a JSON object: required and optional ones with their types."""

    required: Mapping[str, _Kind] = field(default_factory=dict)
    optional: Mapping[str, _Kind] = field(default_factory=dict)
    extra: tuple[str, ...] = ("transaction",)
    """Fields allowed without checks (their names are listed in error messages too)."""

    def check(self, body: Mapping[str, Any], what: str) -> None:
        """Raise BadPayload for an unknown field, a missing one, or one of the wrong type."""
        takes = ", ".join([*self.required, *self.optional, *self.extra])
        for key in body:
            if key not in self.required and key not in self.optional and key not in self.extra:
                raise BadPayload(f"unknown field {key!r}; {what} takes {takes}")
        for key in self.required:
            if key not in body:
                raise BadPayload(f"{key}: missing ({what} takes {takes})")
        for key, kind in (*self.required.items(), *self.optional.items()):
            value = body.get(key)
            if key in body and (not isinstance(value, kind) or _is_bool_as_number(value, kind)):
                raise BadPayload(
                    f"{key}: expected {_KIND_NAMES[kind]}, got {json_type_name(value)}"
                )


def _is_bool_as_number(value: object, kind: _Kind) -> bool:
    return isinstance(value, bool) and kind is not bool


_SESSION = {"session": str}
SPECS: dict[str, _Spec] = {
    "session/start": _Spec(_SESSION),
    "session/end": _Spec(_SESSION),
    "session/send": _Spec({"session": str, "text": str}, {"id": str}),
    "session/history": _Spec(_SESSION, {"limit": int, "before": str}),
    "session/restore": _Spec({"session": str, "messages": list}),
    "session/dismiss_error": _Spec(_SESSION),
    "session/add": _Spec(
        {"session": str, "template": str}, {"agent_name": str, "agent_metadata": str}
    ),
    "session/remove": _Spec(_SESSION),
    "config/reload": _Spec(),
    "health_check": _Spec(),
}
ACTIONS = tuple(SPECS)
"""Every action `{base}/bridge/request/<action>` accepts."""
assert ACTIONS == ALL_ACTIONS, "config.models.ALL_ACTIONS and SPECS must list the same actions"

HISTORY_PAGE = 50
"""Messages in a session/history page when the request gives no limit."""
HISTORY_PAGE_MAX = 200
"""The largest `limit` a session/history request may ask for."""
HISTORY_PAGE_BYTES = 262_144
"""A page is also cut so that its JSON stays under this size (at least one message is sent)."""
CONFIG_FIELD_REFUSED = (
    "config: session/add no longer takes a session configuration; it takes a template of the"
    " config file ([templates.NAME]): session, template and optionally agent_name and"
    " agent_metadata"
)

_SEND_TOPIC = _Spec({"text": str}, {"id": str}, extra=())
_COMMAND_TOPIC = _Spec({"command": str}, extra=())
_MESSAGE = _Spec(
    {"id": str, "timestamp": (str, int, float), "type": str, "text": str},
    {"final": bool, "session": str, "reply_to": (str, type(None))},
    extra=(),
)


def decode_text(payload: bytes, max_payload_bytes: int) -> str:
    """The payload as text; raises BadPayload when too large or not UTF-8."""
    if len(payload) > max_payload_bytes:
        raise BadPayload(
            f"payload too large: {len(payload)} bytes, over the limit of {max_payload_bytes}"
            " (mqtt.max_payload_bytes)"
        )
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = payload[exc.start]
        raise BadPayload(
            f"payload is not valid UTF-8 (byte 0x{bad:02x} at position {exc.start})"
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _has_lone_surrogate(value: Any) -> bool:
    """Whether a decoded JSON value holds a string that is not Unicode (from a \\udXXX escape)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def decode_object(text: str) -> dict[str, Any]:
    """Parse text as a JSON object (RFC 8259: no NaN or Infinity, strings are Unicode); raises
    BadPayload naming what was wrong."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadPayload(
            f"payload is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise BadPayload("payload is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # NaN/Infinity, or int() refusing a number of over 4300 digits
        raise BadPayload(f"payload is not valid JSON ({str(exc).split(';')[0]})") from None
    # Only an escape can make a lone surrogate: the text itself was decoded from UTF-8.
    if "\\u" in text and _has_lone_surrogate(value):
        raise BadPayload(
            "payload is not valid JSON (a string holds a lone surrogate escape such as \\ud800,"
            " which is not Unicode)"
        )
    if not isinstance(value, dict):
        raise BadPayload(f"payload must be a JSON object, got {json_type_name(value)}")
    return value


def _check_send_id(send_id: str | None) -> None:
    if send_id is not None and not 0 < len(send_id) <= MAX_SEND_ID_LENGTH:
        raise BadPayload(f"id: must be 1 to {MAX_SEND_ID_LENGTH} characters, got {len(send_id)}")


def parse_send(payload: bytes, max_payload_bytes: int) -> SendPayload:
    """A `send` topic payload: UTF-8 text, or a JSON object {"text": ..., "id": ...}.

    Text that does not start with "{" is always plain text; text that starts with "{" and parses
    as a JSON object must be the object form. Raises BadPayload.
    """
    text = decode_text(payload, max_payload_bytes)
    if text.lstrip().startswith("{"):
        try:
            body = decode_object(text)
        except BadPayload:
            body = None
        if body is not None:
            _SEND_TOPIC.check(body, "the send topic")
            _check_send_id(body.get("id"))
            text, send_id = body["text"], body.get("id")
            if not text.strip():
                raise EmptyText()
            return SendPayload(text, send_id)
    if not text.strip():
        raise EmptyText()
    return SendPayload(text)


def parse_command(payload: bytes, max_payload_bytes: int) -> Command:
    """A `command` topic payload: start | end | dismiss_error, plain or {"command": ...}."""
    text = decode_text(payload, max_payload_bytes).strip()
    value = text
    if text.startswith("{"):
        body = decode_object(text)
        _COMMAND_TOPIC.check(body, "the command topic")
        value = body["command"]
    try:
        return Command(value)
    except ValueError:
        choices = ", ".join(c.value for c in Command)
        raise BadPayload(f"unknown command {value!r}; expected one of {choices}") from None


def _parse_message(index: int, raw: object) -> dict[str, Any]:
    """One restored message in the message event shape, normalised; raises BadPayload."""
    where = f"messages[{index}]"
    if not isinstance(raw, dict):
        raise BadPayload(f"{where}: expected an object, got {json_type_name(raw)}")
    try:
        _MESSAGE.check(raw, "a message")
        return ReceivedMessage.from_dict(raw).to_dict()
    except ValueError as exc:
        raise BadPayload(f"{where}: {exc}") from None


def history_page(
    session_id: str, messages: list[dict[str, Any]], limit: Any, before: Any
) -> dict[str, Any]:
    """One page of a history (oldest first within the page), newest page first.

    `before` is the `next` cursor of the previous page: the id of its oldest message. The answer
    is {"session", "messages", "next", "total"}; `next` is null on the last page, `total` counts
    the whole history.
    """
    if limit is None:
        limit = HISTORY_PAGE
    if not isinstance(limit, int) or not 0 < limit <= HISTORY_PAGE_MAX:
        raise BadPayload(f"limit: must be 1 to {HISTORY_PAGE_MAX}, got {limit!r}")
    end = len(messages)
    if before is not None:
        end = next((i for i, m in enumerate(messages) if m.get("id") == before), -1)
        if end < 0:
            raise BadPayload(f"before: no message {before!r} in the history (it may have been"
                             " trimmed or replaced); start again without before")
    start = max(0, end - limit)
    page = messages[start:end]
    size = 0
    keep = len(page)
    for index in range(len(page) - 1, -1, -1):  # newest first, until the byte budget is spent
        size += len(dumps(page[index])) + 1  # bytes as published (UTF-8), not characters
        if size > HISTORY_PAGE_BYTES and index < len(page) - 1:
            keep = len(page) - 1 - index
            break
    page = page[len(page) - keep :]
    first = end - len(page)
    cursor = page[0]["id"] if page and first > 0 else None
    return {"session": session_id, "messages": page, "next": cursor, "total": len(messages)}


OVERSIZE_ECHO_FACTOR = 16
"""A too-large request is still read for its transaction when under this many times the limit."""


def _oversize_transaction(payload: bytes, max_payload_bytes: int) -> tuple[Any, bool]:
    """The transaction of a request refused as too large, so the requester can match the error."""
    if not max_payload_bytes < len(payload) <= max_payload_bytes * OVERSIZE_ECHO_FACTOR:
        return None, False
    try:
        body = decode_object(payload.decode("utf-8"))
    except (BadPayload, UnicodeDecodeError):
        return None, False
    if "transaction" in body:
        return body["transaction"], True
    return None, False


def ok(data: Any, transaction: Any = None, *, has_transaction: bool = False) -> dict[str, Any]:
    """An ok response."""
    response: dict[str, Any] = {"status": "ok", "data": data}
    if has_transaction:
        response["transaction"] = transaction
    return response


def error(text: str, transaction: Any = None, *, has_transaction: bool = False) -> dict[str, Any]:
    """An error response."""
    response: dict[str, Any] = {"status": "error", "error": text}
    if has_transaction:
        response["transaction"] = transaction
    return response


Handler = Callable[[Mapping[str, Any]], Awaitable[Any]]
EXPIRED = "request expired (MQTT message expiry) before it could be carried out; nothing was done"


@dataclass(frozen=True, slots=True)
class Request:
    """A decoded request: its body when valid, else the problem to answer with."""

    action: str
    body: Mapping[str, Any] | None = None
    problem: str | None = None
    transaction: Any = None
    has_transaction: bool = False

    @property
    def session_id(self) -> str | None:
        """The session a valid request names, if any (requests to one session run in order)."""
        if self.body is None:
            return None
        session_id = self.body.get("session")
        return session_id if isinstance(session_id, str) else None


class Router:
    """Routes `bridge/request/<action>` payloads to the hub; every outcome is a response dict."""

    def __init__(
        self, hub: Hub, *, max_payload_bytes: int = 65_536, control: ControlConfig | None = None
    ) -> None:
        self._hub = hub
        self._max = max_payload_bytes
        self._control = control or ControlConfig()
        self._handlers: dict[str, Handler] = {
            "session/start": self._start,
            "session/end": self._end,
            "session/send": self._send,
            "session/history": self._history,
            "session/restore": self._restore,
            "session/dismiss_error": self._dismiss_error,
            "session/add": self._add,
            "session/remove": self._remove,
            "config/reload": self._reload,
            "health_check": self._health_check,
        }

    def prepare(self, action: str, payload: bytes) -> Request:
        """Decode and check a request without acting on it (pure, cheap, never raises)."""
        try:
            text = decode_text(payload, self._max)
            # An empty payload is an empty request: fine for health_check, else "missing".
            body = decode_object(text) if text.strip() else {}
        except BadPayload as exc:
            tx, has_tx = _oversize_transaction(payload, self._max)
            return Request(action, problem=str(exc), transaction=tx, has_transaction=has_tx)
        has_tx = "transaction" in body
        tx = body.get("transaction")
        if action not in self._handlers:
            known = ", ".join(ACTIONS)
            problem = f"unknown action {action!r}; known actions: {known}"
            return Request(action, problem=problem, transaction=tx, has_transaction=has_tx)
        if not self._control.allows(action):
            problem = f"action {action!r} is not allowed here ([control] actions)"
            return Request(action, problem=problem, transaction=tx, has_transaction=has_tx)
        try:
            if action == "session/add" and "config" in body:
                raise BadPayload(CONFIG_FIELD_REFUSED)
            SPECS[action].check(body, action)
            if "session" in body:
                session_problem = session_id_problem(body["session"])
                if session_problem:
                    raise BadPayload(f"session: {session_problem}")
        except BadPayload as exc:
            return Request(action, problem=str(exc), transaction=tx, has_transaction=has_tx)
        return Request(action, body, transaction=tx, has_transaction=has_tx)

    async def run(self, request: Request, *, deadline: float | None = None) -> dict[str, Any]:
        """Carry out a prepared request; never raises.

        deadline is a time.monotonic() instant (from an MQTT v5 message expiry) after which the
        request is refused instead of carried out late.
        """
        tx, has_tx = request.transaction, request.has_transaction
        if request.problem is not None or request.body is None:
            return error(request.problem or "bad request", tx, has_transaction=has_tx)
        if deadline is not None and time.monotonic() >= deadline:
            return error(EXPIRED, tx, has_transaction=has_tx)
        try:
            data = await self._handlers[request.action](request.body)
        except (BadPayload, HubError) as exc:
            return error(str(exc), tx, has_transaction=has_tx)
        except Exception as exc:
            log.exception("request_failed", action=request.action)
            return error(f"internal error: {type(exc).__name__}", tx, has_transaction=has_tx)
        return ok(data, tx, has_transaction=has_tx)

    async def _start(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return (await self._hub.start_session(body["session"])).to_json()

    async def _end(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return (await self._hub.end_session(body["session"])).to_json()

    async def _send(self, body: Mapping[str, Any]) -> Any:
        text, send_id = body["text"], body.get("id")
        if not text.strip():
            raise EmptyText()
        _check_send_id(send_id)
        return await self._hub.send(body["session"], text, send_id=send_id)

    async def _history(self, body: Mapping[str, Any]) -> Any:
        return history_page(
            body["session"], self._hub.history(body["session"]),
            body.get("limit"), body.get("before"),
        )

    async def _restore(self, body: Mapping[str, Any]) -> Any:
        messages: list[dict[str, Any]] = []
        for index, raw in enumerate(body["messages"]):
            messages.append(_parse_message(index, raw))
        session_id = body["session"]
        return {"session": session_id, "kept": self._hub.restore(session_id, messages)}

    async def _dismiss_error(self, body: Mapping[str, Any]) -> Any:
        self._hub.dismiss_error(body["session"])
        return {"session": body["session"]}

    async def _add(self, body: Mapping[str, Any]) -> dict[str, Any]:
        snapshot = await self._hub.add_session(
            body["session"],
            body["template"],
            agent_name=body.get("agent_name"),
            agent_metadata=body.get("agent_metadata"),
        )
        return snapshot.to_json()

    async def _remove(self, body: Mapping[str, Any]) -> Any:
        return await self._hub.remove_session(body["session"])

    async def _reload(self, body: Mapping[str, Any]) -> Any:
        return await self._hub.reload()

    async def _health_check(self, body: Mapping[str, Any]) -> Any:
        return self._hub.health()
