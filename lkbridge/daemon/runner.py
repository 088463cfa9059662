"""Runs one daemon session: supervision with backoff, history persistence, and hub events."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from lkbridge.backoff import Backoff
from lkbridge.bridges.hub import (
    DaemonNotice,
    ErrorInfo,
    HubError,
    HubEvent,
    HubEventKind,
    MessageEvent,
    SessionNotice,
    SessionSnapshot,
)
from lkbridge.config.models import SessionConfig
from lkbridge.daemon.journal import Journal
from lkbridge.daemon.store import MessageStore, StoreError
from lkbridge.log import get_logger, redact_text
from lkbridge.messages import ReceivedMessage, SentMessage, utcnow
from lkbridge.session.agent import AgentFailure
from lkbridge.session.core import Session
from lkbridge.session.events import (
    AgentChanged,
    ConnectionState,
    ConnectionStateChanged,
    ErrorChanged,
    HistoryRestored,
    MessageReceived,
    MessageUnanswered,
    SessionEvent,
)

log = get_logger(__name__)

ANSWERS_KEPT = 1000

_DISCONNECT_REASONS = {
    "SERVER_SHUTDOWN": "server_shutdown",
    "ROOM_DELETED": "room_deleted",
    "ROOM_CLOSED": "room_deleted",
    "PARTICIPANT_REMOVED": "removed_from_room",
    "DUPLICATE_IDENTITY": "removed_from_room",
}


def end_reason(session: Session) -> str | None:
    """Why the agent or the room went away, in the words of the retained state (None: it has
    not). agent_left, agent_join_timeout, connect_failed, server_shutdown, room_deleted,
    removed_from_room or room_disconnected."""
    if session.connection_state == ConnectionState.DISCONNECTED:
        reason = session.disconnect_reason
        if reason is not None:
            return _DISCONNECT_REASONS.get(reason, "room_disconnected")
        return "connect_failed" if session.error is not None else "room_disconnected"
    failure = session.agent.failure
    if failure is AgentFailure.LEFT:
        return "agent_left"
    if failure is AgentFailure.TIMEOUT:
        return "agent_join_timeout"
    return None


class SessionRunner:
    """Owns one Session for the daemon and keeps it running while it is wanted."""

    def __init__(
        self,
        cfg: SessionConfig,
        session: Session,
        store: MessageStore,
        emit: Callable[[HubEvent], None],
        *,
        backoff: Backoff | None = None,
        stable_after: float = 30.0,
        journal: Journal | None = None,
    ) -> None:
        self.cfg = cfg
        self.session = session
        self.store = store
        self.journal = journal or Journal(store)
        self._admission = asyncio.Lock()  # FIFO: sends enter the session's outbox in order
        self._emit = emit
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        self.wanted = False
        self.retry_at: float | None = None
        self.restarts = 0
        self._wake = asyncio.Event()
        self._start_now = asyncio.Event()
        self._store_failing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._inflight_sends: set[str] = set()
        self._answers: dict[str, dict[str, Any]] = {}  # send id -> first answer (bounded)
        self._conversations: dict[str, str] = {}  # sent message id -> conversation id (bounded)
        self._sending = 0  # texts being delivered right now (see snapshot "sending")
        self._state_waiters: list[asyncio.Event] = []
        self.end_reason: str | None = None
        """Why the agent or room went away; kept in the retained state until the next start."""
        self.last_restart: dict[str, Any] | None = None
        self._log = log.bind(session=cfg.id)
        session.add_listener(self._on_event)

    @property
    def id(self) -> str:
        return self.cfg.id

    # -- events ----------------------------------------------------------------------------

    def _on_event(self, event: SessionEvent) -> None:
        self._wake.set()
        if isinstance(event, ConnectionStateChanged):
            for waiter in self._state_waiters:
                waiter.set()
        if isinstance(event, MessageReceived):
            # Persist first: a message is on disk before anyone is told about it.
            self._persist(self.store.upsert, event.message)
            self._emit(HubEvent(HubEventKind.MESSAGE, self.id, self.message_event(event.message)))
        elif isinstance(event, ConnectionStateChanged | AgentChanged):
            self._emit(HubEvent(HubEventKind.STATE, self.id, self.snapshot()))
        elif isinstance(event, ErrorChanged):
            self._emit(HubEvent(HubEventKind.ERROR, self.id, self.error_data()))
            self._emit(HubEvent(HubEventKind.STATE, self.id, self.snapshot()))
        elif isinstance(event, HistoryRestored):
            self._persist(self.store.replace, event.messages)
        elif isinstance(event, MessageUnanswered):
            notice = SessionNotice(self.id, "unanswered", {
                "id": event.message_id, "reason": event.reason,
                "superseded_by": event.superseded_by,
                "at": event.at.isoformat(timespec="milliseconds"),
            })
            self._emit(HubEvent(HubEventKind.SESSION_EVENT, self.id, notice))

    def _persist(self, write: Callable[[str, Any], None], data: Any) -> None:
        """Write to the store; a failing disk is reported once, and events still go out."""
        try:
            write(self.id, data)
        except StoreError as exc:
            if not self._store_failing:
                self._store_failing = True
                self._log.error("history_not_saved", error=str(exc))
                notice = DaemonNotice("history_not_saved", {"session": self.id, "error": str(exc)})
                self._emit(HubEvent(HubEventKind.BRIDGE, "", notice))
            return
        if self._store_failing:
            self._store_failing = False
            self._log.info("history_saved_again")
            notice = DaemonNotice("history_saved_again", {"session": self.id})
            self._emit(HubEvent(HubEventKind.BRIDGE, "", notice))

    def error_data(self) -> ErrorInfo | None:
        """The current error for bridges, with anything secret-looking scrubbed from its text."""
        error = self.session.error
        if error is None:
            return None
        data = error.to_dict()
        return ErrorInfo(data["kind"], redact_text(data["message"]), data["at"])

    def message_event(self, message: ReceivedMessage) -> MessageEvent:
        conversation_id = None
        if self._conversations:
            key = message.reply_to if message.reply_to is not None else message.id
            conversation_id = self._conversations.get(key)
        return MessageEvent(self.id, message, conversation_id)

    def snapshot(self) -> SessionSnapshot:
        session = self.session
        return SessionSnapshot(
            session=self.id,
            connection_state=session.connection_state.value,
            # Connected means connected (not connecting or reconnecting, unlike Session's flag).
            is_connected=self.connected,
            agent=session.agent.to_dict(),
            error=self.error_data(),
            room=session.room_name,
            wanted=self.wanted,
            restarts=self.restarts,
            end_reason=self.end_reason,
            last_restart=self.last_restart,
            # A reply that becomes final while another text is on its way was cut short by it
            # (agents interrupt and finalise): answer waiters need to know (Wyoming bridge).
            sending=self._sending,
            timestamp=utcnow().isoformat(timespec="milliseconds"),
        )

    @property
    def connected(self) -> bool:
        """In the room now (Session.is_connected is also true while connecting)."""
        return self.session.connection_state is ConnectionState.CONNECTED

    # -- lifecycle -------------------------------------------------------------------------

    def restore_from_store(self) -> int:
        messages = self.store.load(self.id)
        if messages:
            self.session.restore_message_history(messages)
        return len(messages)

    def start(self) -> None:
        """Want the session running: start it now and keep restarting it until end()."""
        self.wanted = True
        self.backoff.reset()
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"session-supervisor-{self.id}"
            )
        else:
            self._start_now.set()  # cut a restart delay short

    async def end(self) -> None:
        """Stop wanting it: cancel supervision and leave the room."""
        self.wanted = False
        for waiter in self._state_waiters:
            waiter.set()  # sends waiting for a (re)connect stop waiting: it is not coming
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.retry_at = None
        await self.session.end()
        self._emit(HubEvent(HubEventKind.STATE, self.id, self.snapshot()))

    async def aclose(self) -> None:
        await self.end()
        await self.session.aclose()

    def _trouble(self) -> str | None:
        return end_reason(self.session)

    async def _supervise(self) -> None:
        while self.wanted:
            try:
                await self._run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the supervisor die silently
                self._log.exception("session_supervisor_failed", error=str(exc))
                await self._pause(self.backoff.next())

    async def _run_once(self) -> None:
        """Start, wait for trouble, then leave and wait out a backoff delay."""
        loop = asyncio.get_running_loop()
        self._wake.clear()
        started = loop.time()
        self.end_reason = None
        await self.session.start()
        reason = self._trouble()
        while reason is None:
            await self._wake.wait()
            self._wake.clear()
            reason = self._trouble()
        if not self.wanted:
            return
        self.end_reason = reason
        if reason == "agent_left" and not self.cfg.restart_on_agent_leave:
            self._log.info("session_not_restarted", reason=reason)
            self.wanted = False
            await self.session.end()
            self._emit(HubEvent(HubEventKind.STATE, self.id, self.snapshot()))
            return
        if loop.time() - started > self.stable_after:
            self.backoff.reset()
        delay = self.backoff.next()
        self.restarts += 1
        self.last_restart = {
            "reason": reason, "at": utcnow().isoformat(timespec="milliseconds"),
        }
        self._log.warning("session_restart_scheduled", reason=reason, delay=round(delay, 2))
        if self.session.connection_state != ConnectionState.DISCONNECTED:
            await self.session.end()  # leave the room the agent failed in; start afresh
        self._emit(HubEvent(HubEventKind.STATE, self.id, replace(self.snapshot(), retry_in=delay)))
        await self._pause(delay)

    async def _pause(self, delay: float) -> None:
        """Sleep for delay, or less if start() is asked for meanwhile."""
        self._start_now.clear()
        self.retry_at = asyncio.get_running_loop().time() + delay
        try:
            await asyncio.wait_for(self._start_now.wait(), delay)
        except TimeoutError:
            pass
        finally:
            self.retry_at = None

    # -- commands --------------------------------------------------------------------------

    async def _wait_until_not_disconnected(self, timeout: float) -> None:
        """While the session is wanted but (re)starting, wait (bounded) for it to connect, so
        text sent during a restart is held for the agent instead of failing at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.wanted and self.session.connection_state == ConnectionState.DISCONNECTED:
            left = deadline - loop.time()
            if left <= 0:
                return
            changed = asyncio.Event()
            self._state_waiters.append(changed)
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                return
            finally:
                if changed in self._state_waiters:
                    self._state_waiters.remove(changed)

    def _stored(self, send_id: str) -> bool:
        try:
            return self.store.seen_send_id(self.id, send_id)
        except StoreError as exc:
            self._log.error("send_id_not_checked", error=str(exc))
            return False

    async def send(
        self, text: str, send_id: str | None, *, conversation_id: str | None = None
    ) -> dict[str, Any]:
        """Send text; a repeated send_id is acknowledged (duplicate: true) but not sent again.

        The answer always has id, timestamp, text, duplicate and send_id; for a duplicate whose
        first answer is no longer remembered (e.g. after a restart) id and timestamp are None.
        """
        return await (await self.submit(text, send_id, conversation_id=conversation_id))

    async def submit(
        self, text: str, send_id: str | None, *, seq: int | None = None,
        conversation_id: str | None = None,
    ) -> asyncio.Future[dict[str, Any]]:  # fmt: skip
        """Queue a send behind the earlier ones and return the future of its answer (send()).

        Returns as soon as the text is in the session's outbox, so the next send can be queued
        while this one is delivered (pipelined; the outbox keeps the order on the wire). `seq`
        is its journal entry: marked carried out the moment the agent's transport has the text
        (with the send id, in one transaction), or once the send failed.
        """
        loop = asyncio.get_running_loop()
        async with self._admission:
            await self._wait_until_not_disconnected(self.cfg.agent_connect_timeout)
            # Memory first: the store may be failing (a full disk) and must not be the only
            # record, or a repeated id would be carried out again.
            if send_id is not None and (
                send_id in self._inflight_sends or send_id in self._answers
                or self._stored(send_id)
            ):
                self._finish(seq, None)
                first = self._answers.get(send_id)
                if first is None:
                    first = {"id": None, "timestamp": None, "text": text, "send_id": send_id}
                done: asyncio.Future[dict[str, Any]] = loop.create_future()
                done.set_result(first | {"duplicate": True})
                return done
            if send_id is not None:
                self._inflight_sends.add(send_id)
            # Pipelined, but bounded: wait for room rather than fail with a full queue.
            await self.session.wait_send_room()
            waiting = self.session.queue_text(
                text, on_delivered=lambda message: self._finish(seq, send_id, message)
            )
            self._sending += 1
        answer = self._answer(waiting, send_id, seq, conversation_id)
        return loop.create_task(answer, name=f"send-{self.id}")

    async def _answer(
        self, waiting: Awaitable[SentMessage | None], send_id: str | None, seq: int | None,
        conversation_id: str | None,
    ) -> dict[str, Any]:  # fmt: skip
        try:
            sent = await waiting
        finally:
            self._sending -= 1
            if send_id is not None:
                self._inflight_sends.discard(send_id)
        if sent is None:
            self._finish(seq, None)  # answered with a refusal (send_failed): done with it
            error = self.error_data()
            raise HubError(error.message if error is not None else "the message was not sent")
        answer = sent.to_dict() | {"send_id": send_id}
        if conversation_id is not None:
            # Recorded for the reply's message events (its reply_to is this message's id).
            self._conversations[sent.id] = conversation_id
            while len(self._conversations) > ANSWERS_KEPT:
                del self._conversations[next(iter(self._conversations))]
            answer["conversation_id"] = conversation_id
        if send_id is not None:
            self._answers[send_id] = answer
            while len(self._answers) > ANSWERS_KEPT:
                del self._answers[next(iter(self._answers))]
        return answer | {"duplicate": False}

    def _finish(
        self, seq: int | None, send_id: str | None, sent: SentMessage | None = None
    ) -> None:
        """Journal entry carried out (the send id remembered and the sent text stored with it,
        in one transaction); never raises."""
        try:
            if seq:  # 0: carried out without a journal entry (the disk was failing)
                record = (self.id, sent.as_received()) if sent is not None else None
                self.journal.finish(
                    seq, send_id=(self.id, send_id) if send_id else None, sent=record
                )
            elif send_id is not None:
                self.store.remember_send_id(self.id, send_id)
        except StoreError as exc:
            self._log.error("send_id_not_saved", error=str(exc))
