"""What arrives on the bridge's command topics: requests, sends and commands, carried out in
per-session lanes within the bounds of [control]."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from lkbridge.bridges.hub import Expired, Hub, HubError, Intent
from lkbridge.bridges.mqtt.intake import Intake, message_digest
from lkbridge.bridges.mqtt.lanes import Job, Lanes
from lkbridge.bridges.mqtt.limits import TokenBucket, response_topic_problem
from lkbridge.bridges.mqtt.router import (
    EXPIRED,
    BadPayload,
    Command,
    EmptyText,
    Request,
    Router,
    dumps,
    parse_command,
    parse_send,
)
from lkbridge.bridges.mqtt.topics import Inbound, ParsedTopic, Topics, is_valid_session_id
from lkbridge.config.models import ControlConfig
from lkbridge.mqtt.types import IncomingMessage, Priority

ENDED = "the session was ended before this was carried out"
DATA_ACTIONS = frozenset({"session/send", "session/restore"})
"""Requests that may wait for the agent; they queue per session, behind each other only."""


class Publish(Protocol):
    def __call__(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        properties: dict[str, Any] | None = None,
        priority: Priority = Priority.NORMAL,
    ) -> None: ...


class Incoming:
    """Carries out requests, sends and commands for the MQTT bridge.

    Per session, sends (which may wait for an absent agent) have one lane and control (start,
    end, dismiss_error, reads, add, remove) another, so control never waits behind sends; a send
    still waits for the control that arrived before it. Everything is bounded: a token bucket
    (requests per second), a count of jobs running or waiting (max_requests_in_flight), and
    1000 waiting jobs per lane.
    """

    def __init__(
        self,
        hub: Hub,
        topics: Topics,
        router: Router,
        control: ControlConfig,
        *,
        max_payload_bytes: int,
        own_filters: Iterable[str],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        publish: Publish,
        complain: Callable[..., None],
        count: Callable[[str], None],
        info_changed: Callable[[], None],
    ) -> None:
        self._hub = hub
        self._topics = topics
        self._base = topics.base
        self._router = router
        self._control = control
        self._max_payload = max_payload_bytes
        self._own_filters = list(own_filters)
        self._spawn = spawn
        self._publish = publish
        self._complain = complain
        self._count = count
        self._info_changed = info_changed
        self._data = Lanes("data", spawn)
        self._controls = Lanes("control", spawn)
        self._running = 0  # jobs running or waiting, bounded by max_requests_in_flight
        self._bucket = TokenBucket(control.requests_per_second, control.request_burst)

    def handle(self, parsed: ParsedTopic, message: IncomingMessage, intake: Intake) -> None:
        """Carry out (or refuse, saying why) a request; a send or command goes into `intake`,
        to be journaled with the rest of its batch (journal()) and then queued."""
        if not self._bucket.take():
            self._count("requests_refused")
            return
        if message.retain:
            self._complain("retained_ignored", topic=message.topic)
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
            return  # the broker's second copy of one already journaled: acknowledged only
        command: Command | None = None
        expires_at = None
        if message.message_expiry_interval:  # as wall-clock time: the journal outlives us
            expires_at = time.time() + message.message_expiry_interval - (
                time.monotonic() - message.received_at
            )
        try:
            if not is_valid_session_id(session_id):
                raise BadPayload(f"{session_id!r} is not a valid session id")
            if parsed.kind is Inbound.SEND:
                if not self._control.allows("session/send"):
                    raise BadPayload("sending is not allowed here ([control] actions)")
                send = parse_send(message.payload, self._max_payload)
                intent = Intent(session_id, "send", send.text, send.send_id, expires_at, key)
                lanes = self._data
            else:
                command = parse_command(message.payload, self._max_payload)
                if not self._control.allows(f"session/{command.value}"):
                    raise BadPayload(f"{command.value} is not allowed here ([control] actions)")
                intent = Intent(session_id, command.value, None, None, expires_at, key)
                lanes = self._controls
        except EmptyText as exc:
            # A clear failure of this session's send (HA's notify can publish an empty text).
            self._complain("send_failed", topic=message.topic, session=session_id, error=str(exc))
            return
        except BadPayload as exc:
            self._complain("bad_payload", topic=message.topic, error=str(exc))
            return
        if self._running + intake.count() >= self._control.max_requests_in_flight:
            self._complain("command_dropped", topic=message.topic, error=self._busy())
            return
        if self._expired(message.topic, deadline):
            return
        topic = message.topic

        def enqueue(seq: int) -> None:
            if lanes is self._controls and command is Command.END:
                self._data.abandon(session_id, ENDED)  # queued sends are answered, not left
            job = self._intent_job(topic, seq, intent)
            if lanes is self._data:
                job = self._after_control(session_id, job)
            if not lanes.enqueue(session_id, self._counted(job)):
                self._running -= 1  # never queued, so never run nor abandoned
                self._hub.drop(seq)
                self._complain("command_dropped", topic=topic, error="too many commands queued")

        intake.add(topic, intent, enqueue)

    def journal(self, intake: Intake) -> bool:
        """Journal the batch's intents in one commit and queue them; True if any was journaled
        (its messages are then acknowledged once the journal is on disk: Hub.durable())."""
        results = self._hub.journal([item.intent for item in intake.intents])
        journaled = False
        for item, result in zip(intake.intents, results, strict=True):
            if isinstance(result, HubError):
                self._failed(item.topic, item.intent, result)
            else:
                journaled = True
                item.enqueue(result)
        return journaled

    def _intent_job(self, topic: str, seq: int, intent: Intent) -> Job:
        """Carry out a journaled send or command; a send's answer is awaited aside (the lane
        goes on with the next one: pipelined, in order)."""

        async def run() -> None:
            answer = asyncio.ensure_future(await self._hub.carry_out(seq, intent))
            if answer.done():
                self._answered(topic, intent, answer)
            else:
                answer.add_done_callback(functools.partial(self._answered, topic, intent))

        def abandon(reason: str) -> None:
            self._hub.drop(seq)
            self._failed(topic, intent, HubError(reason))

        return Job(run, abandon)

    def _answered(self, topic: str, intent: Intent, answer: asyncio.Future[Any]) -> None:
        if not answer.cancelled() and (exc := answer.exception()) is not None:
            self._failed(topic, intent, exc)

    def _failed(self, topic: str, intent: Intent, exc: BaseException) -> None:
        if isinstance(exc, Expired):
            self._complain("expired_ignored", topic=topic)
            return
        name = "send_failed" if intent.kind == "send" else "command_failed"
        self._complain(name, topic=topic, session=intent.session_id, error=str(exc))

    def _after_control(self, session_id: str, job: Job) -> Job:
        """job, run only once the session's control commands received before it have run (a
        send after a start waits for the start; a start never waits for sends)."""
        barrier = self._controls.barrier(session_id)
        if barrier is None:
            return job

        async def run() -> None:
            await barrier
            await job.run()

        return Job(run, job.abandon)

    def _busy(self) -> str:
        limit = self._control.max_requests_in_flight
        return f"busy: {limit} requests are in progress ([control] max_requests_in_flight)"

    def _counted(self, job: Job) -> Job:
        """job, counted in `_running` from now until it has run or was abandoned."""
        self._running += 1
        done = False

        def finish() -> None:
            nonlocal done
            if not done:
                done = True
                self._running -= 1

        async def run() -> None:
            try:
                await job.run()
            finally:
                finish()

        def abandon(reason: str) -> None:
            try:
                job.abandon(reason)
            finally:
                finish()

        return Job(run, abandon)

    def _expired(self, topic: str, deadline: float | None) -> bool:
        if deadline is not None and time.monotonic() >= deadline:
            self._complain("expired_ignored", topic=topic)
            return True
        return False

    def _request(self, action: str, message: IncomingMessage, deadline: float | None) -> None:
        request = self._router.prepare(action, message.payload)
        if self._running >= self._control.max_requests_in_flight:
            self._respond(request, message, {"status": "error", "error": self._busy()})
            return

        async def run() -> None:
            response = await self._router.run(request, deadline=deadline)
            self._respond(request, message, response)

        def abandon(reason: str) -> None:
            self._respond(request, message, {"status": "error", "error": reason})

        job = self._counted(Job(run, abandon))
        lane = request.session_id
        if lane is None:
            self._spawn(job.run(), f"mqtt-bridge-request-{action}")
            return
        if request.body is not None and action in ("session/end", "session/remove"):
            self._data.abandon(lane, ENDED)
        lanes = self._controls
        if action in DATA_ACTIONS:
            lanes, job = self._data, self._after_control(lane, job)
        if not lanes.enqueue(lane, job):
            job.abandon("too many requests")

    def _respond(self, request: Request, message: IncomingMessage, response: Any) -> None:
        if request.has_transaction and "transaction" not in response:
            response["transaction"] = request.transaction
        payload = dumps(response)
        self._publish(
            self._topics.response(request.action), payload, retain=False, priority=Priority.LOW
        )
        if message.response_topic:
            problem = response_topic_problem(
                message.response_topic, self._base, self._own_filters
            )
            if problem is not None:
                self._complain("response_topic_refused", topic=message.topic, error=problem)
            else:
                props: dict[str, Any] = {}
                if message.correlation_data is not None:
                    props["correlation_data"] = message.correlation_data
                self._publish(
                    message.response_topic, payload, retain=False,
                    properties=props or None, priority=Priority.LOW,
                )  # fmt: skip
        if response.get("status") == "ok" and request.action == "config/reload":
            self._info_changed()
        if response.get("error") == EXPIRED:
            self._complain("expired_ignored", topic=message.topic)
