"""Session: one LiveKit room with an agent, its state, errors and message history."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any

from livekit import rtc

from lkbridge.messages import MessageType, ReceivedMessage, SentMessage
from lkbridge.session.agent import Agent, AgentLifecycle
from lkbridge.session.events import (
    ConnectionState,
    MessageUnanswered,
    SessionError,
    SessionErrorKind,
)
from lkbridge.session.options import SessionOptions, describe_connect_error, describe_failure
from lkbridge.session.outbox import GateDecision, Outbox, agent_gate
from lkbridge.session.replies import ReplyOutcome, ReplyStatus, ReplyTracker
from lkbridge.session.room_watch import RoomWatch
from lkbridge.session.transport_set import TransportSet
from lkbridge.tokens.sources import (
    InvalidatingTokenSource,
    TokenRequestOptions,
    TokenSourceConfigurable,
    TokenSourceFixed,
    TokenSourceResponse,
    check_token_usable,
    with_room_name,
)
from lkbridge.transports.agent_session import ignore_agent_session_streams
from lkbridge.transports.base import MessageReceiver, MessageSender


class Session(RoomWatch):
    """A connection to a LiveKit room that can contain an agent.

    Build one with `from_fixed_token_source`, `from_configurable_token_source` or `with_agent`,
    then `await start()`. State (`connection_state`, `agent`, `error`, `messages`) is observed
    with `events()` or `add_listener()`; observers hear only about real changes.
    """

    def __init__(
        self,
        token_source: TokenSourceFixed | TokenSourceConfigurable,
        *,
        token_options: TokenRequestOptions | None = None,
        options: SessionOptions | None = None,
        senders: Sequence[MessageSender] | None = None,
        receivers: Sequence[MessageReceiver] | None = None,
    ) -> None:
        """Prefer the named constructors; `token_options=None` means a fixed token source."""
        self._token_source = token_source
        self._options = options or SessionOptions()
        self._token_options = (
            with_room_name(token_options, self._options.room_name)
            if token_options is not None
            else None
        )
        super().__init__(name=self._options.name, history_limit=self._options.history_limit)
        self._transports = TransportSet(
            senders,
            receivers,
            on_message=self._store,
            on_error=self._report_transport_error,
        )
        self._replies = ReplyTracker(on_settled=self._reply_settled)
        self._reply_timers: dict[str, asyncio.TimerHandle] = {}
        self._outbox = Outbox(
            self._deliver,
            self._gate,
            limit=self._options.send_queue_limit,
            hold_time=self._options.agent_connect_timeout,
            send_timeout=self._options.send_timeout,
        )

        self._response: TokenSourceResponse | None = None
        self._start_task: asyncio.Task[None] | None = None
        self._closed = False

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_fixed_token_source(
        cls,
        source: TokenSourceFixed,
        *,
        options: SessionOptions | None = None,
        senders: Sequence[MessageSender] | None = None,
        receivers: Sequence[MessageReceiver] | None = None,
    ) -> Session:
        """A session whose credentials are decided by the source alone (`fetch()`)."""
        return cls(source, options=options, senders=senders, receivers=receivers)

    @classmethod
    def from_configurable_token_source(
        cls,
        source: TokenSourceConfigurable,
        *,
        token_options: TokenRequestOptions = TokenRequestOptions(),  # noqa: B008 (frozen)
        options: SessionOptions | None = None,
        senders: Sequence[MessageSender] | None = None,
        receivers: Sequence[MessageReceiver] | None = None,
    ) -> Session:
        """A session that asks the source for `token_options` (captured now) on every start."""
        return cls(
            source,
            token_options=token_options,
            options=options,
            senders=senders,
            receivers=receivers,
        )

    @classmethod
    def with_agent(
        cls,
        agent_name: str,
        *,
        agent_metadata: str | None = None,
        token_source: TokenSourceConfigurable,
        options: SessionOptions | None = None,
        senders: Sequence[MessageSender] | None = None,
        receivers: Sequence[MessageReceiver] | None = None,
    ) -> Session:
        """A session whose token dispatches the named agent."""
        return cls.from_configurable_token_source(
            token_source,
            token_options=TokenRequestOptions(agent_name=agent_name, agent_metadata=agent_metadata),
            options=options,
            senders=senders,
            receivers=receivers,
        )

    # ------------------------------------------------------------------ state

    @property
    def options(self) -> SessionOptions:
        return self._options

    def _fail(self, kind: SessionErrorKind, exc: BaseException) -> None:
        url = self._response.server_url if self._response is not None else None
        cause = describe_failure(exc, url, self._options.connect_timeout)
        self._set_error(SessionError(kind=kind, cause=cause, exception=exc))

    def _state_changed(self) -> None:
        self._outbox.notify()
        if (
            self._connection_state is ConnectionState.DISCONNECTED
            or self._agent.lifecycle is AgentLifecycle.FAILED
        ):
            self._replies.end()  # this room's agent will answer nothing more

    @property
    def room(self) -> rtc.Room | None:
        """The rtc.Room of the current (or last) start; a fresh one is made by every start."""
        return self._room

    @property
    def room_name(self) -> str | None:
        if self._room is not None and self._room.isconnected() and self._room.name:
            return self._room.name
        return self._response.room_name if self._response is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def disconnect_reason(self) -> str | None:
        """Why the room dropped the session unexpectedly since the last start: the name of
        rtc's DisconnectReason (e.g. `SERVER_SHUTDOWN`, `ROOM_DELETED`), else None."""
        return self._disconnect_reason

    def __repr__(self) -> str:
        return (
            f"Session(name={self._options.name!r}, state={self._connection_state.value}, "
            f"agent={self._agent.lifecycle.value}, messages={len(self._history)})"
        )

    async def send_text(self, text: str) -> SentMessage | None:
        """Send text through every sender in order; None (and a `sender` error) on failure.

        Until the agent is active the text is held (see `SessionOptions.hold_until_agent`) and
        this waits for its delivery.
        """
        return await self.queue_text(text)

    async def wait_send_room(self) -> None:
        """Wait until queue_text() would not fail for a full send queue (see send_queue_limit)."""
        await self._outbox.wait_room()

    def queue_text(
        self, text: str, *, on_delivered: Callable[[SentMessage], None] | None = None
    ) -> Coroutine[Any, Any, SentMessage | None]:
        """send_text() in two steps: the text is queued (in order) now; await the result.

        `on_delivered(message)` is called as soon as every sender has it, before the result is
        ready and before anything else runs on the event loop.
        """
        message = SentMessage(text=text)
        hook = None if on_delivered is None else (lambda: on_delivered(message))
        try:
            queued = self._outbox.submit_nowait(message, hook)
        except Exception as exc:
            queued = asyncio.get_running_loop().create_future()
            queued.set_exception(exc)
        return self._sent(message, queued)

    async def _sent(self, message: SentMessage, queued: asyncio.Future[None]) -> SentMessage | None:
        try:
            await queued
        except Exception as exc:
            self._log.warning("message_send_failed", message_id=message.id, error=str(exc))
            self._fail(SessionErrorKind.SENDER, exc)
            return None
        return message

    async def _deliver(self, message: SentMessage) -> None:
        self._replies.begin(message.id)
        try:
            await self._transports.send(message)
        except BaseException:
            self._replies.abandon(message.id)
            raise
        self._replies.sent(message.id)
        timeout = self._options.reply_timeout
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self._reply_timers[message.id] = loop.call_later(
                timeout, self._reply_overdue, message.id
            )

    async def wait_for_reply(self, message_id: str, timeout: float | None = 30.0) -> ReplyOutcome:
        """How the message with this id (from `send_text`) was answered, waiting up to timeout
        seconds: `answered` with the final reply tied to it (`reply_to`), `interrupted` when a
        newer message was sent before that reply was final, `ended` when the room or agent went
        away first, `timed_out` when none of that happened in time. Never raises."""
        known = self._replies.outcome(message_id)
        if known is not None:
            return known
        if not self._replies.is_pending(message_id):
            for message in reversed(self._history.snapshot()):  # e.g. a restored history
                if message.reply_to == message_id and message.final:
                    return ReplyOutcome(ReplyStatus.ANSWERED, message_id, message)
            if not self.is_connected or self._closed:
                return ReplyOutcome(ReplyStatus.ENDED, message_id)
        return await self._replies.wait(message_id, timeout)

    def _reply_settled(self, outcome: ReplyOutcome) -> None:
        timer = self._reply_timers.pop(outcome.message_id, None)
        if timer is not None:
            timer.cancel()
        if outcome.status is not ReplyStatus.ANSWERED:
            # debug: at a high send rate every send interrupts the one before; the event says it
            self._log.debug(
                "message_unanswered", message_id=outcome.message_id, reason=outcome.status.value
            )
            self._emit(
                MessageUnanswered(
                    message_id=outcome.message_id,
                    reason=outcome.status.value,
                    superseded_by=outcome.superseded_by,
                )
            )

    def _reply_overdue(self, message_id: str) -> None:
        self._reply_timers.pop(message_id, None)
        if self._replies.is_pending(message_id):
            self._log.info("message_unanswered", message_id=message_id, reason="timed_out")
            self._emit(MessageUnanswered(message_id=message_id, reason="timed_out"))

    def _store(self, message: ReceivedMessage) -> None:
        if message.type is MessageType.AGENT_TRANSCRIPT:
            message = self._replies.tag(message, self._history.get(message.id))
        super()._store(message)
        self._replies.observe(message)

    def _gate(self, held: bool) -> GateDecision:
        return agent_gate(
            self._agent,
            held=held,
            hold=self._options.hold_until_agent,
            disconnected=self._connection_state is ConnectionState.DISCONNECTED,
            closed=self._closed,
        )

    # ------------------------------------------------------------------ tasks

    def _ensure_pumps(self) -> None:
        if not self._closed:
            self._transports.start_pumps(self._spawn)

    def _report_transport_error(self, exc: BaseException) -> None:
        self._fail(SessionErrorKind.RECEIVER, exc)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Fetch credentials and connect. Never raises: failures land in `error` (connection).

        Ignored while a start is in flight or the session is not disconnected.
        """
        if self._closed:
            self._log.warning("session_start_ignored", reason="closed")
            return
        if (
            self._start_task is not None
            or self._connection_state is not ConnectionState.DISCONNECTED
        ):
            self._log.info("session_start_ignored", state=self._connection_state.value)
            return
        self._ensure_pumps()
        task = self._spawn(self._run_start(), "start")
        self._start_task = task
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # end() or aclose() cancelled the start: that is not an error of start()
        except Exception as exc:  # a bug below must still not escape start()
            self._fail(SessionErrorKind.CONNECTION, exc)
        finally:
            if self._start_task is task:
                self._start_task = None

    async def _fetch_token(self) -> TokenSourceResponse:
        if self._token_options is None:
            return await self._token_source.fetch()  # type: ignore[call-arg]
        return await self._token_source.fetch(self._token_options)  # type: ignore[call-arg]

    async def _run_start(self) -> None:
        self._set_error(None)
        self._cancel_agent_timer()
        await self._release_room()
        self._timed_out_identity = None
        self._disconnect_reason = None
        self._response = None
        self._set_connection_state(ConnectionState.CONNECTING)
        self._set_agent(Agent.connecting(buffering=False))
        room: rtc.Room | None = None
        try:
            response = await self._fetch_token()
            self._response = response
            check_token_usable(response.participant_token)
            room = rtc.Room()
            self._room = room
            ignore_agent_session_streams(room)
            self._observe(room)
            await self._transports.bind(room)
            room_options = self._options.room_options() if self._options.room_options else None
            connect = (
                room.connect(response.server_url, response.participant_token, room_options)
                if room_options is not None
                else room.connect(response.server_url, response.participant_token)
            )
            await asyncio.wait_for(connect, self._options.connect_timeout)
        except asyncio.CancelledError:
            await self._abort_start(room)
            raise
        except Exception as exc:
            await self._abort_start(room)
            self._fail(SessionErrorKind.CONNECTION, exc)
            return
        if not room.isconnected():  # dropped again while we were finishing up
            return
        self._set_connection_state(ConnectionState.CONNECTED)
        self._update_agent()
        self._log.info(
            "session_started",
            room=room.name or response.room_name,
            identity=room.local_participant.identity,
            dispatches_agent=response.dispatches_agent,
        )
        if response.dispatches_agent:
            timeout = self._options.agent_connect_timeout
            self._agent_timer = self._spawn(self._agent_timeout(timeout), "agent_timeout")

    async def _abort_start(self, room: rtc.Room | None) -> None:
        with contextlib.suppress(Exception):
            await self._release_room(room)
        self._set_connection_state(ConnectionState.DISCONNECTED)
        self._set_agent(Agent.disconnected())

    async def _release_room(self, room: rtc.Room | None = None) -> None:
        """Unbind the transports from `room` (default: the current one) and disconnect it."""
        room = room or self._room
        await self._transports.unbind(room)
        if room is not None and room.isconnected():
            await room.disconnect()

    async def end(self) -> None:
        """Disconnect from the room. Messages and the last error are kept; the cached token is
        invalidated so the next start gets a fresh room."""
        start = self._start_task
        if start is not None and not start.done():
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        self._ending = True
        try:
            self._cancel_agent_timer()
            await self._release_room()
        finally:
            self._ending = False
        self._set_connection_state(ConnectionState.DISCONNECTED)
        self._set_agent(Agent.disconnected())
        self._invalidate_token()
        self._log.info("session_ended")

    async def aclose(self) -> None:
        """End the session and release everything: tasks, receivers, event streams."""
        if self._closed:
            return
        await self.end()
        self._closed = True
        await self._outbox.aclose()
        self._replies.close()
        for timer in self._reply_timers.values():
            timer.cancel()
        self._reply_timers.clear()
        await self._transports.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._hub.close()
        self._log.info("session_closed")

    async def __aenter__(self) -> Session:
        self._ensure_pumps()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _room_dropped(self, room: rtc.Room) -> None:
        self._invalidate_token()
        self._spawn(self._release_room(room), "release_room")

    def _invalidate_token(self) -> None:
        if isinstance(self._token_source, InvalidatingTokenSource):
            self._token_source.invalidate()


__all__ = [
    "ConnectionState",
    "ReplyOutcome",
    "ReplyStatus",
    "Session",
    "SessionError",
    "SessionErrorKind",
    "SessionOptions",
    "describe_connect_error",
]
