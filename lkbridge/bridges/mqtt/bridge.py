"""The MQTT bridge: publishes the hub's sessions on MQTT and carries out what arrives there."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any

from lkbridge.bridges.hub import (
    DaemonNotice,
    ErrorInfo,
    Hub,
    HubError,
    HubEvent,
    HubEventKind,
    MessageEvent,
    SessionChange,
    SessionNotice,
    SessionSnapshot,
)
from lkbridge.bridges.mqtt.discovery import (
    agent_display_state,
    bridge_device_config,
    bridge_node_id,
    removal_topic,
    session_device_config,
    session_node_id,
)
from lkbridge.bridges.mqtt.incoming import Incoming
from lkbridge.bridges.mqtt.intake import Intake
from lkbridge.bridges.mqtt.reports import DropReports
from lkbridge.bridges.mqtt.router import Router, dumps
from lkbridge.bridges.mqtt.settings import OFFLINE, ONLINE, client_settings
from lkbridge.bridges.mqtt.topics import Inbound, SessionLeaf, Topics, is_valid_session_id
from lkbridge.config.models import Config
from lkbridge.log import get_logger, redact_payload
from lkbridge.mqtt.client import (
    ConnectInfo,
    IncomingMessage,
    MqttClient,
    MqttError,
    OutgoingMessage,
)
from lkbridge.mqtt.service import SharedMqttService
from lkbridge.mqtt.types import Priority

log = get_logger(__name__)

HA_BIRTH_DELAY = (0.5, 3.0)
"""Seconds (random in this range) between Home Assistant's birth message and our re-publish."""
INFO_LIMIT = 262_144
"""Bytes of the retained bridge/info; beyond, its `config` is left out (`truncated: true`)."""
# Bridge events after which the retained bridge/info is out of date (config or state directory).
INFO_CHANGING_EVENTS = frozenset({
    "config_reloaded", "config_reload_failed", "overrides_ignored", "overrides_moved_aside",
    "history_not_saved", "history_saved_again",
})


def is_final_reply(data: Any) -> bool:
    """A finished agent message (what the retained `last_reply` topic carries)."""
    return (
        isinstance(data, Mapping)
        and data.get("type") == "agent_transcript"
        and data.get("final") is True
    )


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
        self._ha_name = config.homeassistant.name
        control = config.control
        self._router = Router(
            hub, max_payload_bytes=config.mqtt.max_payload_bytes, control=control
        )
        self._client = client or MqttClient(client_settings(config.mqtt, topics))
        self._ha_birth_delay = ha_birth_delay
        self._own_filters = topics.subscriptions(homeassistant=self._ha)
        self._service = SharedMqttService(self._client, topics.base, self._own_filters)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reports = DropReports(self._report_drops)
        self._incoming = Incoming(
            hub, topics, self._router, control,
            max_payload_bytes=config.mqtt.max_payload_bytes,
            own_filters=self._own_filters,
            spawn=self._spawn,
            publish=self._pub,
            complain=self._complain,
            count=self._reports.count,
            info_changed=self._publish_info,
        )  # fmt: skip
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
        self._reports.close()
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
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        properties: dict[str, Any] | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> None:
        """Queue one QoS 1 publish; never waits and never raises (the hot path).

        Every publish of the bridge passes here, so here is where payloads are scrubbed of
        secrets, and where a publish the outbox refuses is counted and reported at once.
        """
        try:
            queued = self._client.publish_nowait(
                topic, redact_payload(payload), 1, retain, properties, priority
            )
        except MqttError as exc:
            if not self._stopping:
                self._log.warning("mqtt_publish_refused", topic=topic, error=str(exc))
            return
        if not queued and priority is not Priority.REPORT:
            self._reports.count("events_dropped")

    def _report_drops(self, what: str, count: int, total: int) -> None:
        self._log.warning(what, count=count, total=total)
        payload = dumps({"event": what, "count": count, "total": total})
        self._pub(self._topics.bridge_event, payload, retain=False, priority=Priority.REPORT)

    def event(self, name: str, **data: Any) -> None:
        """Publish a bridge-level event on `{base}/bridge/event` (not retained)."""
        self._pub(self._topics.bridge_event, dumps({"event": name, **data}), retain=False)

    def _complain(self, name: str, **data: Any) -> None:
        """An event about what a broker client sent (bad payload, refused command): these yield
        to state and message events when the outgoing queue is full."""
        payload = dumps({"event": name, **data})
        self._pub(self._topics.bridge_event, payload, retain=False, priority=Priority.LOW)

    def _publish_info(self) -> None:
        try:
            info = self._hub.info().to_json()
        except Exception:
            self._log.exception("bridge_info_failed")
            return
        payload = dumps(info)
        if len(payload) > INFO_LIMIT:
            sessions = list(info.get("sessions") or [])
            info = {**info, "config": None, "truncated": True, "session_count": len(sessions)}
            payload = dumps(info)
            while len(payload) > INFO_LIMIT and info["sessions"]:
                info["sessions"] = info["sessions"][: len(info["sessions"]) // 2]
                payload = dumps(info)
        self._pub(self._topics.bridge_info, payload, retain=True)

    def _publish_state(self, session_id: str, state: object, *, force: bool = False) -> None:
        if not isinstance(state, SessionSnapshot):
            return
        self._pub(self._topic(session_id, SessionLeaf.STATE), dumps(state.to_json()), retain=True)
        connection = state.connection_state or "disconnected"
        agent = agent_display_state(state.agent)
        last = self._scalars.get(session_id)
        if force or last is None or last[0] != connection:
            topic = self._topic(session_id, SessionLeaf.CONNECTION_STATE)
            self._pub(topic, str(connection).encode(), retain=True)
        if force or last is None or last[1] != agent:
            self._pub(self._topic(session_id, SessionLeaf.AGENT_STATE), agent.encode(), retain=True)
        self._scalars[session_id] = (connection, agent)

    def _publish_error(self, session_id: str, error: object) -> None:
        payload = dumps(error.to_json()) if isinstance(error, ErrorInfo) else b""
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
            config = session_device_config(self._topics, session_id, self._ha_name)
            self._pub(topic, dumps(config), retain=True)
        self._publish_last_reply(session_id)

    def _publish_last_reply(self, session_id: str, data: Any = None) -> None:
        """Retain the agent's last finished reply (from the history when data is None)."""
        if data is None:
            try:
                history = [m.to_json() for m in self._hub.history(session_id)]
            except HubError:
                return
            data = next((m for m in reversed(history) if is_final_reply(m)), None)
            if data is None:
                return  # nothing yet: leave what the broker retains
        topic = self._topic(session_id, SessionLeaf.LAST_REPLY)
        self._pub(topic, dumps(data), retain=True)

    def publish_all(self) -> None:
        """Bridge state and info, every session's retained topics, and discovery."""
        self._pub(self._topics.bridge_state, ONLINE, retain=True)
        self._publish_info()
        if self._ha:
            topic = self._topics.discovery(bridge_node_id(self._topics))
            config = bridge_device_config(self._topics, self._ha_name)
            self._pub(topic, dumps(config), retain=True)
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
            SessionLeaf.LAST_REPLY,
        ):
            self._pub(self._topic(session_id, leaf), b"", retain=True)
        self._topics.forget_session(session_id)

    # -- hub events (called synchronously on the loop: keep cheap) ---------------------------

    def _on_hub_event(self, event: HubEvent) -> None:
        kind, session_id, data = event.kind, event.session_id, event.data
        if kind is HubEventKind.MESSAGE:
            if not isinstance(data, MessageEvent):
                return
            payload = dumps(data.to_json())
            if session_id in self._sessions:
                self._pub(self._topic(session_id, SessionLeaf.MESSAGE), payload, retain=False)
            elif self._bridgeable(session_id):
                self._publish_session(session_id)
                self._pub(self._topic(session_id, SessionLeaf.MESSAGE), payload, retain=False)
            else:
                return
            if is_final_reply(data.to_json()):
                self._publish_last_reply(session_id, data.to_json())
        elif kind is HubEventKind.STATE:
            if session_id in self._sessions:
                self._publish_state(session_id, data)
            elif self._bridgeable(session_id):
                self._publish_session(session_id)  # first sight: also availability, discovery
        elif kind is HubEventKind.ERROR:
            if session_id in self._sessions:
                self._publish_error(session_id, data)
        elif kind is HubEventKind.SESSION_EVENT and isinstance(data, SessionNotice):
            if session_id in self._sessions:
                payload = dumps(data.to_json())
                self._pub(self._topic(session_id, SessionLeaf.EVENT), payload, retain=False)
        elif kind is HubEventKind.SESSION_ADDED:
            if self._bridgeable(session_id):
                self._publish_session(session_id)
            self.event("session_added", session=session_id)
            self._publish_info()
        elif kind is HubEventKind.SESSION_REMOVED:
            if isinstance(data, SessionChange) and data.replaced:
                # Re-created with a changed config: keep its topics and HA device (no churn).
                self._scalars.pop(session_id, None)
                return
            self._remove_session(session_id)
            self.event("session_removed", session=session_id)
            self._publish_info()
        elif kind is HubEventKind.BRIDGE and isinstance(data, DaemonNotice):
            self._pub(self._topics.bridge_event, dumps(data.to_json()), retain=False)
            if data.event in INFO_CHANGING_EVENTS:
                self._publish_info()

    # -- connection --------------------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) for the first connection; False if the broker is not reachable yet."""
        try:
            await self._client.wait_connected(timeout)
        except Exception:
            return False
        return True

    @property
    def unsent(self) -> int:
        """Messages not (yet) acknowledged by the broker; after aclose(), those never sent."""
        return self._client.unsent_count

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
            # The bridge's own handling comes first and is never skipped: a transport
            # subscription cannot take the bridge's topics away (and may not overlap them).
            try:
                self._dispatch(message, intake)
            except Exception:
                self._log.exception("mqtt_message_failed", topic=message.topic)
            try:
                self._service.dispatch(message)
            except Exception:
                self._log.exception("mqtt_message_failed", topic=message.topic)
        if intake.intents and self._incoming.journal(intake):
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
        self._incoming.handle(parsed, message, intake)
