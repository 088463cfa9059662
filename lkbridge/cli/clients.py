"""MQTT clients of a running daemon (`lkbridge send`, `status`): broker settings, requests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lkbridge.bridges.mqtt.bridge import tls_settings
from lkbridge.config.models import MqttConfig
from lkbridge.config.where import find_config
from lkbridge.errors import LkbridgeError
from lkbridge.log import get_logger
from lkbridge.mqtt.client import IncomingMessage, MqttClient, MqttError, MqttSettings
from lkbridge.mqtt.topic import base_topic_problem, topic_matches

log = get_logger(__name__)

CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
RETAINED_GRACE = 1.0  # seconds to collect retained messages after subscribing
DAEMON_GRACE = 2.0  # seconds a request waits when no daemon is online on the base topic


class ClientError(LkbridgeError):
    """Something a command-line client reports to the user and exits non-zero for."""


@dataclass(frozen=True)
class Target:
    """Where the daemon is: the broker to connect to and the base topic it publishes under."""

    settings: MqttSettings
    base_topic: str

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port} (base topic {self.base_topic!r})"

    def topic(self, *levels: str) -> str:
        return "/".join((self.base_topic, *levels))


def load_target(
    config_path: str | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    base_topic: str | None = None,
) -> Target:
    """Broker settings from the config's [mqtt] (when it exists), overridden by the flags.

    With no path given, the default config (`$LKBRIDGE_CONFIG` or /etc/lkbridge/config.toml)
    is used if it exists, else [mqtt]'s defaults; a path given explicitly must exist.
    """
    from lkbridge.config.files import load_config
    from lkbridge.config.models import ConfigError
    from lkbridge.config.secrets import SecretError

    where = find_config(config_path)
    path = where.path
    mqtt = MqttConfig()
    if where.named or Path(path).exists():
        try:
            mqtt = load_config(path).mqtt
        except ConfigError as exc:
            raise ClientError(f"{path}: invalid configuration:\n{exc}") from exc
    try:
        password = mqtt.password.reveal() if mqtt.password is not None else None
    except SecretError as exc:
        raise ClientError(f"mqtt.password: {exc.message}") from exc
    tls = tls_settings(mqtt)
    settings = MqttSettings(
        host=host or mqtt.host,
        port=port or mqtt.port,
        # Never the daemon's own client id: the broker would drop one of the two connections.
        client_id=f"lkbridge-cli-{os.getpid()}-{secrets.token_hex(3)}",
        username=mqtt.username,
        password=password,
        protocol="5" if mqtt.protocol.value == "5" else "3.1.1",
        keepalive=30,
        tls=tls,
        persistent_session=False,
        queue_limit=100,
        connect_timeout=CONNECT_TIMEOUT,
    )
    base = base_topic or mqtt.base_topic
    if problem := base_topic_problem(base):
        raise ClientError(f"base topic {base!r}: {problem}")
    return Target(settings, base)


def decode_json(payload: bytes) -> Any:
    """The payload as JSON, or None when it is empty or not JSON."""
    try:
        return json.loads(payload) if payload else None
    except (ValueError, UnicodeDecodeError):
        return None


# Everything but newline and tab below U+0020, DEL and the C1 range: ESC, CR, BEL, CSI...
_UNPRINTABLE = {c: "\ufffd" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}


def printable(text: str) -> str:
    """Text from the broker or an agent, fit for a terminal: control characters (escape
    sequences, carriage returns) become U+FFFD, so a peer cannot rewrite or script the screen."""
    return text.translate(_UNPRINTABLE)


Listener = Callable[[IncomingMessage], None]


class BridgeClient:
    """A connection to the broker that talks to lkbridge: `async with BridgeClient(target):`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.latest: dict[str, bytes] = {}  # the last payload on each topic, retained or live
        self._mqtt = MqttClient(target.settings)
        self._listeners: list[tuple[str, Listener]] = []
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._response_filters: set[str] = set()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BridgeClient:
        await self._mqtt.__aenter__()
        # Unlike the daemon, a command-line client gives up at the first failed attempt.
        deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT
        while not self._mqtt.connected:
            error = self._mqtt.last_error
            if error is not None or asyncio.get_running_loop().time() > deadline:
                await self._mqtt.aclose(timeout=0.5)
                why = error or f"no connection within {CONNECT_TIMEOUT:.0f} s"
                raise ClientError(f"cannot reach the MQTT broker at {self.target.where}: {why}")
            await asyncio.sleep(0.01)
        self._reader = asyncio.get_running_loop().create_task(self._read(), name="cli-mqtt-reader")
        await self.subscribe(self.target.topic("bridge", "state"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._mqtt.aclose(timeout=2.0)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    def on(self, topic_filter: str, listener: Listener) -> None:
        """Call listener for every message on topics matching the filter (subscribe separately)."""
        self._listeners.append((topic_filter, listener))

    async def subscribe(self, topic_filter: str) -> None:
        try:
            await self._mqtt.subscribe(topic_filter, qos=1)
        except MqttError as exc:
            raise ClientError(str(exc)) from exc

    async def _read(self) -> None:
        async for msg in self._mqtt.messages():
            if msg.payload:
                self.latest[msg.topic] = msg.payload
            else:  # an empty payload clears a retained topic
                self.latest.pop(msg.topic, None)
            self._answer(msg)
            for topic_filter, listener in list(self._listeners):
                if topic_matches(topic_filter, msg.topic):
                    try:
                        listener(msg)
                    except Exception:
                        log.exception("cli_listener_failed", topic=msg.topic)

    def _answer(self, msg: IncomingMessage) -> None:
        if not msg.topic.startswith(self.target.topic("bridge", "response", "")):
            return
        body = decode_json(msg.payload)
        if not isinstance(body, dict):
            return
        waiter = self._waiters.get(str(body.get("transaction")))
        if waiter is not None and not waiter.done():
            waiter.set_result(body)

    @property
    def bridge_state(self) -> str | None:
        """"online", "offline", or None when no daemon has published on this base topic."""
        body = decode_json(self.latest.get(self.target.topic("bridge", "state"), b""))
        return str(body.get("state")) if isinstance(body, dict) else None

    def daemon_problem(self) -> str:
        """Why the daemon might not answer, in words."""
        state = self.bridge_state
        if state == "offline":
            return f"the lkbridge daemon on {self.target.where} is offline"
        if state is None:
            return f"no lkbridge daemon has published on {self.target.where}"
        return f"the lkbridge daemon on {self.target.where} did not answer in time"

    async def request(
        self, action: str, body: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> dict[str, Any]:
        """Publish a request with a fresh transaction and return the daemon's answer."""
        response_topic = self.target.topic("bridge", "response", action)
        if response_topic not in self._response_filters:
            await self.subscribe(response_topic)
            self._response_filters.add(response_topic)
        transaction = f"cli-{secrets.token_hex(6)}"
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[transaction] = waiter
        payload = json.dumps({**body, "transaction": transaction}, ensure_ascii=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._mqtt.publish(self.target.topic("bridge", "request", action), payload)
            while not waiter.done():
                waited = loop.time() - started
                # No daemon online (its retained state says so, or there is none): say so soon.
                if waited > timeout or (waited > DAEMON_GRACE and self.bridge_state != "online"):
                    raise ClientError(f"no answer to {action}: {self.daemon_problem()}")
                await asyncio.wait({waiter}, timeout=0.05)
            return waiter.result()
        finally:
            self._waiters.pop(transaction, None)

    async def collect_retained(self, *filters: str, until: Callable[[], bool] | None = None,
                               grace: float = RETAINED_GRACE) -> None:
        """Subscribe to filters and give their retained messages time to arrive."""
        for topic_filter in filters:
            await self.subscribe(topic_filter)
        deadline = asyncio.get_running_loop().time() + grace
        while asyncio.get_running_loop().time() < deadline:
            if until is not None and until():
                return
            await asyncio.sleep(0.02)


EXIT_INTERRUPTED = 3
"""`send --wait`: a newer message was sent before the answer was whole (no answer printed)."""
EXIT_UNANSWERED = 4
"""`send --wait`: no final answer in time (the daemon's reply_timeout or --timeout)."""
EXIT_ENDED = 5
"""`send --wait`: the agent or its room went away before answering."""


@dataclass(frozen=True)
class WaitOutcome:
    """How `send --wait` ended: `answered` (text is the answer), `interrupted`, `unanswered`
    or `ended`; `note` says why in words."""

    status: str
    text: str | None = None
    note: str = ""


class ReplyWatcher:
    """Finds how the daemon's session answered a message we sent, among its events.

    The answer is the agent transcript whose `reply_to` is our message's id, once final. The
    daemon's `unanswered` event for our id (`{base}/<id>/event`) says it was interrupted by a
    newer message, that the agent went away, or that no reply came in its reply_timeout.
    Events may arrive before the daemon's response tells us our id, so all of them are kept
    and re-scanned when it does.
    """

    def __init__(self, session: str) -> None:
        self.session = session
        self.answer: asyncio.Future[WaitOutcome] = asyncio.get_running_loop().create_future()
        self._events: list[dict[str, Any]] = []
        self._sent_id: str | None = None

    def on_message(self, msg: IncomingMessage) -> None:
        if self.answer.done():
            return
        event = decode_json(msg.payload)
        if isinstance(event, dict) and event.get("session") == self.session:
            self._events.append(event)
            self._scan()

    def sent(self, message_id: str) -> None:
        self._sent_id = message_id
        self._scan()

    def _scan(self) -> None:
        if self._sent_id is None or self.answer.done():
            return
        # once our id is known each event is looked at once (a busy session must not make
        # every new event re-scan all earlier ones)
        events, self._events = self._events, []
        for e in events:
            if e.get("reply_to") == self._sent_id and e.get("type") == "agent_transcript":
                if e.get("final"):
                    self.answer.set_result(WaitOutcome("answered", str(e.get("text", ""))))
                    return
            elif e.get("event") == "unanswered" and e.get("id") == self._sent_id:
                reason = e.get("reason")
                if reason == "interrupted":
                    note = "a newer message was sent to the session before the answer was whole"
                    self.answer.set_result(WaitOutcome("interrupted", None, note))
                elif reason == "ended":
                    note = "the agent or its room went away before answering"
                    self.answer.set_result(WaitOutcome("ended", None, note))
                else:
                    note = "the agent gave no final answer within the session's reply_timeout"
                    self.answer.set_result(WaitOutcome("unanswered", None, note))
                return


_EXIT_CODES = {"answered": 0, "interrupted": EXIT_INTERRUPTED, "unanswered": EXIT_UNANSWERED,
               "ended": EXIT_ENDED}


async def send(
    target: Target, session: str, text: str, *, send_id: str | None = None, wait: bool = False,
    timeout: float = 30.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
) -> int:
    """`lkbridge send`: 0 when the daemon accepted the text and, with wait, the agent answered
    this very message (the answer is printed); 3 interrupted, 4 unanswered, 5 ended."""
    async with BridgeClient(target) as client:
        watcher = ReplyWatcher(session)
        if wait:
            for leaf in ("message", "event"):
                client.on(target.topic(session, leaf), watcher.on_message)
                await client.subscribe(target.topic(session, leaf))
        body: dict[str, Any] = {"session": session, "text": text}
        if send_id is not None:
            body["id"] = send_id
        answer = await client.request("session/send", body)
        if answer.get("status") != "ok":
            raise ClientError(str(answer.get("error") or "the daemon refused the request"))
        data = answer.get("data") or {}
        duplicate = bool(data.get("duplicate"))
        if not wait or duplicate:
            note = " (already sent earlier with this id; not sent again)" if duplicate else ""
            print(f"sent to {session}: message {data.get('id')}{note}", file=out, flush=True)
            return 0
        watcher.sent(str(data.get("id")))
        try:
            outcome = await asyncio.wait_for(watcher.answer, timeout)
        except TimeoutError:
            outcome = WaitOutcome(
                "unanswered", None, f"the agent gave no final answer within {timeout:g} s"
            )
        if outcome.status == "answered":
            print(printable(outcome.text or ""), file=out, flush=True)
        else:
            print(f"lkbridge send: {outcome.status}: {outcome.note}", file=err, flush=True)
        return _EXIT_CODES[outcome.status]


def _agent_summary(state: dict[str, Any] | None) -> str:
    if not isinstance(state, dict):
        return "-"
    agent = state.get("agent")
    if not isinstance(agent, dict):
        return "-"
    if agent.get("failure"):
        return f"failed ({agent['failure']})"
    return str(agent.get("state") or agent.get("lifecycle") or "-")


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


async def gather_status(client: BridgeClient) -> dict[str, Any]:
    """Retained bridge state/info, each session's retained state and its last message."""
    target = client.target
    info_topic = target.topic("bridge", "info")

    def complete() -> bool:
        info = decode_json(client.latest.get(info_topic, b""))
        if not isinstance(info, dict):
            return False
        return all(target.topic(str(s), "state") in client.latest for s in info.get("sessions", []))

    await client.collect_retained(info_topic, target.topic("+", "state"), until=complete)
    info = decode_json(client.latest.get(info_topic, b""))
    sessions: dict[str, dict[str, Any]] = {}
    for topic, payload in sorted(client.latest.items()):
        parts = topic[len(target.base_topic) + 1 :].split("/")
        if len(parts) == 2 and parts[1] == "state" and parts[0] != "bridge":
            sessions[parts[0]] = {"state": decode_json(payload)}
    for sid in info.get("sessions", []) if isinstance(info, dict) else []:
        sessions.setdefault(str(sid), {"state": None})
    online = client.bridge_state == "online"

    async def history(sid: str) -> None:
        with contextlib.suppress(ClientError):
            body = {"session": sid, "limit": 1}
            answer = await client.request("session/history", body, timeout=5.0)
            data = answer.get("data") or {}
            messages = data.get("messages")
            if answer.get("status") == "ok" and isinstance(messages, list):
                total = data.get("total")
                sessions[sid]["messages"] = total if isinstance(total, int) else len(messages)
                sessions[sid]["last_message"] = messages[-1] if messages else None

    if online:
        await asyncio.gather(*(history(sid) for sid in sessions))
    return {
        "broker": f"{target.settings.host}:{target.settings.port}",
        "base_topic": target.base_topic,
        "bridge": {"state": client.bridge_state, "info": info},
        "sessions": sessions,
    }


def render_status(status: dict[str, Any]) -> str:
    """The human-readable `lkbridge status` table."""
    bridge, sessions = status["bridge"], status["sessions"]
    info = bridge["info"] if isinstance(bridge["info"], dict) else {}
    version = f"lkbridge {info['version']}" if info.get("version") else "lkbridge"
    where = f"{status['broker']} (base topic {status['base_topic']!r})"
    lines = [f"{version}: {bridge['state'] or 'not seen'} on {where}, {len(sessions)} session(s)"]
    if not sessions:
        return "\n".join(lines)
    rows = [("SESSION", "CONNECTION", "AGENT", "ROOM", "MESSAGES", "LAST MESSAGE")]
    errors: list[str] = []
    for sid, entry in sessions.items():
        state = entry.get("state") if isinstance(entry.get("state"), dict) else {}
        last = entry.get("last_message")
        last_text = f"{last.get('type', '?')}: {_short(str(last.get('text', '')), 60)}" if isinstance(
            last, dict) else "-"
        count = entry.get("messages")
        rows.append((sid, str(state.get("connection_state") or "-"), _agent_summary(state),
                     str(state.get("room") or "-"), "-" if count is None else str(count), last_text))
        error = state.get("error")
        if isinstance(error, dict) and error.get("message"):
            errors.append(f"  {sid}: {error.get('kind', 'error')} error: {error['message']}")
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
                     + "  " + row[-1])
    if errors:
        lines += ["", "errors:", *errors]
    return printable("\n".join(lines))  # retained payloads anyone with write access may set


async def status(target: Target, *, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    """`lkbridge status`: 0 when the daemon is online, 1 otherwise (what is known is printed)."""
    async with BridgeClient(target) as client:
        result = await gather_status(client)
    if as_json:
        print(json.dumps(result, indent=2, ensure_ascii=False), file=out)
    else:
        print(render_status(result), file=out)
    return 0 if result["bridge"]["state"] == "online" else 1
