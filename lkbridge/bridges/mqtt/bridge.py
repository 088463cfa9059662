"""The MQTT bridge: publishes the hub's sessions on MQTT and carries out what arrives there."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any

import structlog

from lkbridge.bridges.hub import Expired, Hub, HubError, HubEvent, HubEventKind, Intent
from lkbridge.bridges.mqtt.discovery import (
    agent_display_state,
    bridge_device_config,
    bridge_node_id,
    removal_topic,
    session_device_config,
    session_node_id,
)
from lkbridge.bridges.mqtt.intake import Intake, message_digest
from lkbridge.bridges.mqtt.router import (
    EXPIRED,
    BadPayload,
    Request,
    Router,
    parse_command,
    parse_send,
)
from lkbridge.bridges.mqtt.topics import Inbound, SessionLeaf, Topics, is_valid_session_id
from lkbridge.config.models import Config, MqttConfig
from lkbridge.mqtt.client import (
    ConnectInfo,
    IncomingMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    OutgoingMessage,
    TlsSettings,
    WillMessage,
)
from lkbridge.mqtt.service import SharedMqttService

log = structlog.get_logger(__name__)

ONLINE = b'{"state":"online"}'
OFFLINE = b'{"state":"offline"}'
HA_BIRTH_DELAY = (0.5, 3.0)
"""Seconds (random in this range) between Home Assistant's birth message and our re-publish."""
LANE_LIMIT = 1000
"""Commands waiting per session; more are refused (and reported) rather than queued forever."""

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON (values JSON cannot hold are written as their str())."""
    return _encode(data).encode()


def tls_settings(mqtt: MqttConfig) -> TlsSettings | None:
    """[mqtt.tls] as client settings (None: no TLS)."""
    if mqtt.tls is None:
        return None
    return TlsSettings(
        ca_file=str(mqtt.tls.ca_file) if mqtt.tls.ca_file else None,
        cert_file=str(mqtt.tls.cert_file) if mqtt.tls.cert_file else None,
        key_file=str(mqtt.tls.key_file) if mqtt.tls.key_file else None,
        insecure=mqtt.tls.insecure,
    )


def client_settings(mqtt: MqttConfig, topics: Topics) -> MqttSettings:
    """The client's settings from [mqtt], with the offline will on `{base}/bridge/state`."""
    tls = tls_settings(mqtt)
    return MqttSettings(
        host=mqtt.host,
        port=mqtt.port,
        client_id=mqtt.client_id,
        username=mqtt.username,
        password=mqtt.password.reveal() if mqtt.password is not None else None,
        protocol="5" if mqtt.protocol.value == "5" else "3.1.1",
        keepalive=mqtt.keepalive,
        tls=tls,
        will=WillMessage(topics.bridge_state, OFFLINE, qos=1, retain=True),
        queue_limit=mqtt.queue_limit,
        manual_ack=True,  # a send or command is acknowledged once journaled (or refused)
    )


Job = Callable[[], Awaitable[None]]


class MqttBridge:
    """Maps the hub's sessions onto MQTT topics; `async with MqttBridge(hub, config):`.

    Entering never waits for the broker: publishing starts (queued) at once and everything is
    published again on every (re)connect. Leaving publishes offline for the bridge and every
    session, then disconnects cleanly.
    """

    def __init__(
        self,
        hub: Hub,
        config: Config,
        *,
        client: MqttClient | None = None,
        ha_birth_delay: tuple[float, float] = HA_BIRTH_DELAY,
    ) -> None:
        self._hub = hub
        self._topics = topics = Topics(
            config.mqtt.base_topic, config.homeassistant.discovery_prefix
        )
        self._ha = config.homeassistant.enabled
        self._max_payload = config.mqtt.max_payload_bytes
        self._router = Router(hub, max_payload_bytes=config.mqtt.max_payload_bytes)
        self._client = client or MqttClient(client_settings(config.mqtt, topics))
        self._ha_birth_delay = ha_birth_delay
        self._service = SharedMqttService(self._client, topics.base)
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[str, deque[Job]] = {}
        self._scalars: dict[str, tuple[Any, str]] = {}  # session -> (connection, agent state)
        self._sessions: set[str] = set()  # sessions whose topics (and discovery) are out
        self._republish: asyncio.Task[None] | None = None
        self._unobserve: Callable[[], None] | None = None
        self._stopping = False
        self._log = log.bind(base_topic=topics.base)

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def client(self) -> MqttClient:
        return self._client

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> MqttBridge:
        await self._client.__aenter__()
        self._client.on_connect(self._on_connect)
        try:
            for topic_filter in self._topics.subscriptions(homeassistant=self._ha):
                await self._client.subscribe(topic_filter, qos=1)
        except BaseException:
            await self._client.aclose()
            raise
        self._unobserve = self._hub.observe(self._on_hub_event)
        self._hub.provide_service("mqtt", self._service)
        self._spawn(self._receive(), "mqtt-bridge-receive")
        self._log.info("mqtt_bridge_started", homeassistant=self._ha)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop taking commands, publish offline (bridge and sessions), disconnect."""
        if self._stopping:
            return
        self._stopping = True
        if self._unobserve is not None:
            self._unobserve()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        final = [
            OutgoingMessage(self._topic(sid, SessionLeaf.AVAILABILITY), b"offline", 1, True)
            for sid in sorted(self._sessions)
        ]
        final.append(OutgoingMessage(self._topics.bridge_state, OFFLINE, 1, True))
        await self._client.aclose(final)
        self._log.info("mqtt_bridge_stopped", sessions=len(self._sessions))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error("mqtt_bridge_task_failed", task=task.get_name(), error=repr(exc))

    # -- publishing --------------------------------------------------------------------------

    def _topic(self, session_id: str, leaf: SessionLeaf) -> str:
        return self._topics.session(session_id, leaf)

    def _pub(
        self, topic: str, payload: bytes, *, retain: bool, properties: dict[str, Any] | None = None
    ) -> None:
        """Queue one QoS 1 publish; never waits and never raises (the hot path)."""
        try:
            self._client.publish_nowait(topic, payload, 1, retain, properties)
        except MqttError as exc:
            if not self._stopping:
                self._log.warning("mqtt_publish_refused", topic=topic, error=str(exc))

    def event(self, name: str, **data: Any) -> None:
        """Publish a bridge-level event on `{base}/bridge/event` (not retained)."""
        self._pub(self._topics.bridge_event, dumps({"event": name, **data}), retain=False)

    def _publish_info(self) -> None:
        try:
            info = self._hub.info()
        except Exception:
            self._log.exception("bridge_info_failed")
            return
        self._pub(self._topics.bridge_info, dumps(info), retain=True)

    def _publish_state(self, session_id: str, state: Any, *, force: bool = False) -> None:
        if not isinstance(state, dict):
            return
        self._pub(self._topic(session_id, SessionLeaf.STATE), dumps(state), retain=True)
        connection = state.get("connection_state") or "disconnected"
        agent = agent_display_state(state.get("agent"))
        last = self._scalars.get(session_id)
        if force or last is None or last[0] != connection:
            topic = self._topic(session_id, SessionLeaf.CONNECTION_STATE)
            self._pub(topic, str(connection).encode(), retain=True)
        if force or last is None or last[1] != agent:
            self._pub(self._topic(session_id, SessionLeaf.AGENT_STATE), agent.encode(), retain=True)
        self._scalars[session_id] = (connection, agent)

    def _publish_error(self, session_id: str, error: Any) -> None:
        payload = dumps(error) if error else b""
        self._pub(self._topic(session_id, SessionLeaf.ERROR), payload, retain=True)

    def _publish_session(self, session_id: str) -> None:
        """Everything retained about one session, and its discovery config."""
        try:
            state = self._hub.snapshot(session_id)
            error = self._hub.current_error(session_id)
        except HubError:
            return  # removed meanwhile; its SESSION_REMOVED event does the clean-up
        self._sessions.add(session_id)
        self._pub(self._topic(session_id, SessionLeaf.AVAILABILITY), b"online", retain=True)
        self._publish_state(session_id, state, force=True)
        self._publish_error(session_id, error)
        if self._ha:
            topic = self._topics.discovery(session_node_id(self._topics, session_id))
            self._pub(topic, dumps(session_device_config(self._topics, session_id)), retain=True)

    def publish_all(self) -> None:
        """Bridge state and info, every session's retained topics, and discovery."""
        self._pub(self._topics.bridge_state, ONLINE, retain=True)
        self._publish_info()
        if self._ha:
            topic = self._topics.discovery(bridge_node_id(self._topics))
            self._pub(topic, dumps(bridge_device_config(self._topics)), retain=True)
        for session_id in self._hub.session_ids():
            if self._bridgeable(session_id):
                self._publish_session(session_id)

    def _bridgeable(self, session_id: str) -> bool:
        if is_valid_session_id(session_id):
            return True
        self._log.error("session_not_bridged", session=session_id, reason="reserved id")
        return False

    def _remove_session(self, session_id: str) -> None:
        """Clear a removed session's retained topics and its Home Assistant device."""
        self._sessions.discard(session_id)
        self._scalars.pop(session_id, None)
        if self._ha:
            self._pub(removal_topic(self._topics, session_id), b"", retain=True)
        for leaf in (
            SessionLeaf.STATE,
            SessionLeaf.CONNECTION_STATE,
            SessionLeaf.AGENT_STATE,
            SessionLeaf.ERROR,
            SessionLeaf.AVAILABILITY,
        ):
            self._pub(self._topic(session_id, leaf), b"", retain=True)
        self._topics.forget_session(session_id)

    # -- hub events (called synchronously on the loop: keep cheap) ---------------------------

    def _on_hub_event(self, event: HubEvent) -> None:
        kind, session_id, data = event.kind, event.session_id, event.data
        if kind is HubEventKind.MESSAGE:
            if session_id in self._sessions:
                self._pub(self._topic(session_id, SessionLeaf.MESSAGE), dumps(data), retain=False)
            elif self._bridgeable(session_id):
                self._publish_session(session_id)
                self._pub(self._topic(session_id, SessionLeaf.MESSAGE), dumps(data), retain=False)
        elif kind is HubEventKind.STATE:
            if session_id in self._sessions:
                self._publish_state(session_id, data)
            elif self._bridgeable(session_id):
                self._publish_session(session_id)  # first sight: also availability, discovery
        elif kind is HubEventKind.ERROR:
            if session_id in self._sessions:
                self._publish_error(session_id, data)
        elif kind is HubEventKind.SESSION_ADDED:
            if self._bridgeable(session_id):
                self._publish_session(session_id)
            self.event("session_added", session=session_id)
            self._publish_info()
        elif kind is HubEventKind.SESSION_REMOVED:
            if data and data.get("replaced"):
                # Re-created with a changed config: keep its topics and HA device (no churn).
                self._scalars.pop(session_id, None)
                return
            self._remove_session(session_id)
            self.event("session_removed", session=session_id)
            self._publish_info()
        elif kind is HubEventKind.BRIDGE:
            self._pub(self._topics.bridge_event, dumps(dict(data or {})), retain=False)
            if data and data.get("event") == "config_reloaded":
                self._publish_info()

    # -- connection --------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) for the first connection; False if the broker is not reachable yet."""
        try:
            await self._client.wait_connected(timeout)
        except Exception:
            return False
        return True

    def status(self) -> str:
        """One short line for systemd's STATUS=."""
        if self._client.connected:
            return "MQTT connected"
        reason = self._client.last_error
        return f"MQTT broker unreachable ({reason})" if reason else "MQTT connecting"

    async def _on_connect(self, info: ConnectInfo) -> None:
        self.publish_all()
        if info.dropped:
            self._hub.report("mqtt_messages_dropped", dropped=info.dropped)
        self._log.info("mqtt_bridge_published", sessions=len(self._sessions), first=info.first)

    def _schedule_republish(self) -> None:
        """Home Assistant came online: re-publish after a short random delay, once."""
        if self._republish is not None and not self._republish.done():
            return
        self._republish = self._spawn(self._republish_later(), "mqtt-bridge-ha-birth")

    async def _republish_later(self) -> None:
        await asyncio.sleep(random.uniform(*self._ha_birth_delay))
        self.publish_all()
        self._log.info("homeassistant_birth_answered", sessions=len(self._sessions))

    # -- incoming ----------------------------------------------------------------------------

    async def _receive(self) -> None:
        async for batch in self._client.batches():
            self._take(batch)

    def _take(self, batch: list[IncomingMessage]) -> None:
        """Handle what arrived together: sends and commands are journaled in one commit and
        carried out at once; the batch is acknowledged once that commit is on disk.

        (The client sends PUBACKs in arrival order, holding later ones back as needed.) A
        daemon killed before the fsync still has the commit; a power cut before it may lose
        it, but then the broker has no PUBACK and delivers the messages again.
        """
        intake = Intake()
        for message in batch:
            try:
                if not self._service.dispatch(message):
                    self._dispatch(message, intake)
            except Exception:
                self._log.exception("mqtt_message_failed", topic=message.topic)
        if intake.intents:
            results = self._hub.journal([intent for _, intent in intake.intents])
            for (topic, intent), result in zip(intake.intents, results, strict=True):
                if isinstance(result, HubError):
                    self._failed(topic, intent, result)
                else:
                    self._enqueue(intent.session_id, self._intent_job(topic, result, intent))
            if any(not isinstance(r, HubError) for r in results):
                self._spawn(self._ack_when_durable(batch), "mqtt-bridge-ack")
                return
        for message in batch:
            self._client.ack(message)

    async def _ack_when_durable(self, batch: list[IncomingMessage]) -> None:
        try:
            await self._hub.durable()
        except HubError as exc:
            # Not acknowledged: the broker delivers these again after the next reconnect.
            self._log.error("journal_not_durable", error=str(exc))
            self.event("journal_not_durable", error=str(exc))
            return
        for message in batch:
            self._client.ack(message)

    def _dispatch(self, message: IncomingMessage, intake: Intake) -> None:
        parsed = self._topics.parse(message.topic)
        if parsed is None or self._stopping:
            return
        if parsed.kind is Inbound.HA_STATUS:
            # A retained birth is an old one; we published everything on connect anyway.
            if not message.retain and message.payload.strip() == b"online":
                self._schedule_republish()
            return
        if message.retain:
            self.event("retained_ignored", topic=message.topic)
            return
        deadline = None
        if message.message_expiry_interval:  # seconds left when it reached us
            deadline = message.received_at + message.message_expiry_interval
        if parsed.kind is Inbound.REQUEST:
            self._request(parsed.action, message, deadline)
            return
        session_id = parsed.session_id
        key = message_digest(message.topic, message.payload)
        if message.dup and self._hub.journaled(key):
            return  # the broker's second copy of one we journaled: acknowledged, not again
        if self._expired(message.topic, deadline):
            return
        expires_at = None
        if message.message_expiry_interval:
            expires_at = time.time() + message.message_expiry_interval - (
                time.monotonic() - message.received_at
            )
        try:
            if not is_valid_session_id(session_id):
                raise BadPayload(f"{session_id!r} is not a valid session id")
            if parsed.kind is Inbound.SEND:
                send = parse_send(message.payload, self._max_payload)
                intent = Intent(session_id, "send", send.text, send.send_id, expires_at, key)
            else:
                command = parse_command(message.payload, self._max_payload)
                intent = Intent(session_id, command.value, None, None, expires_at, key)
        except BadPayload as exc:
            self.event("bad_payload", topic=message.topic, error=str(exc))
            return
        queued = len(self._lanes.get(session_id, ())) + intake.count(session_id)
        if queued >= LANE_LIMIT:
            self.event("command_dropped", topic=message.topic, error="too many commands queued")
            return
        intake.add(message.topic, intent)

    def _enqueue(self, lane: str, job: Job) -> bool:
        """Run job after the earlier jobs of the same lane (one session's commands in order)."""
        queue = self._lanes.get(lane)
        if queue is None:
            queue = self._lanes[lane] = deque()
            self._spawn(self._drain(lane, queue), f"mqtt-bridge-lane-{lane}")
        elif len(queue) >= LANE_LIMIT:
            return False
        queue.append(job)
        return True

    async def _drain(self, lane: str, queue: deque[Job]) -> None:
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job()
                except Exception:
                    self._log.exception("mqtt_command_failed", session=lane)
        finally:
            if self._lanes.get(lane) is queue:
                del self._lanes[lane]

    def _expired(self, topic: str, deadline: float | None) -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            self.event("expired_ignored", topic=topic)
            return True
        return False

    def _intent_job(self, topic: str, seq: int, intent: Intent) -> Job:
        """Carry out a journaled send or command; a send's answer is awaited aside (pipelined)."""

        async def job() -> None:
            answer = await self._hub.carry_out(seq, intent)
            waiter = asyncio.ensure_future(answer)
            if waiter.done():
                self._answered(topic, intent, waiter)
            else:
                waiter.add_done_callback(functools.partial(self._answered, topic, intent))

        return job

    def _answered(self, topic: str, intent: Intent, answer: asyncio.Future[Any]) -> None:
        if not answer.cancelled() and (exc := answer.exception()) is not None:
            self._failed(topic, intent, exc)

    def _failed(self, topic: str, intent: Intent, exc: BaseException) -> None:
        if isinstance(exc, Expired):
            self.event("expired_ignored", topic=topic)
            return
        name = "send_failed" if intent.kind == "send" else "command_failed"
        self.event(name, topic=topic, session=intent.session_id, error=str(exc))

    def _request(self, action: str, message: IncomingMessage, deadline: float | None) -> None:
        request = self._router.prepare(action, message.payload)

        async def job() -> None:
            response = await self._router.run(request, deadline=deadline)
            self._respond(request, message, response)

        lane = request.session_id
        if lane is None:
            self._spawn(job(), f"mqtt-bridge-request-{action}")
        elif not self._enqueue(lane, job):
            self._respond(request, message, {"status": "error", "error": "too many requests"})

    def _respond(self, request: Request, message: IncomingMessage, response: Any) -> None:
        if request.has_transaction and "transaction" not in response:
            response["transaction"] = request.transaction
        payload = dumps(response)
        self._pub(self._topics.response(request.action), payload, retain=False)
        if message.response_topic:
            props: dict[str, Any] = {}
            if message.correlation_data is not None:
                props["correlation_data"] = message.correlation_data
            self._pub(message.response_topic, payload, retain=False, properties=props or None)
        if response.get("status") == "ok" and request.action == "config/reload":
            self._publish_info()
        if response.get("error") == EXPIRED:
            self.event("expired_ignored", topic=message.topic)
