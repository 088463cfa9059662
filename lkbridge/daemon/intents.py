"""The daemon's side of acknowledged commands: journal them, carry them out, replay after a crash."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from lkbridge.bridges.hub import Expired, HubError, Intent
from lkbridge.daemon.journal import Journal, JournalEntry
from lkbridge.daemon.store import StoreError

if TYPE_CHECKING:
    from lkbridge.daemon.core import Daemon

from lkbridge.log import get_logger

log = get_logger(__name__)

UNJOURNALED = 0
"""The sequence number of an intent carried out without a journal entry (the disk failed)."""


def _settled(result: Any) -> asyncio.Future[Any]:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
    return future


class Intents:
    """Journal, carry out and replay the sends and commands bridges receive (see Hub.journal)."""

    def __init__(self, daemon: Daemon, journal: Journal) -> None:
        self._daemon = daemon
        self.journal = journal
        self._replayed: dict[str, asyncio.Event] = {}
        self._ready = asyncio.Event()  # sessions are built and the replay has begun
        self._tasks: set[asyncio.Task[None]] = set()

    def add(self, intents: Sequence[Intent]) -> list[int | HubError]:
        """Hub.journal: refuse what cannot be carried out, store the rest in one durable commit."""
        daemon = self._daemon
        results: list[int | HubError] = []
        accepted: list[Intent] = []
        for intent in intents:
            if not daemon.accepting:
                results.append(HubError("lkbridge is shutting down"))
            elif intent.session_id not in daemon.config.sessions:
                results.append(HubError(f"unknown session {intent.session_id!r}"))
            else:
                results.append(-1)
                accepted.append(intent)
        try:
            seqs = iter(self.journal.add(accepted))
        except StoreError as exc:
            # A failing disk (full, read-only) must not stop the daemon from serving: carry
            # them out unjournaled (seq 0), as the history is kept in memory meanwhile.
            log.error("journal_not_saved", error=str(exc))
            seqs = iter([UNJOURNALED] * len(accepted))
        return [next(seqs) if r == -1 else r for r in results]

    def has(self, digest: bytes) -> bool:
        try:
            return self.journal.has(digest)
        except StoreError:
            return False

    async def carry_out(self, seq: int, intent: Intent) -> Awaitable[dict[str, Any]]:
        """Hub.carry_out: after this session's replay (if any), in the caller's order."""
        await self._ready.wait()
        replay = self._replayed.get(intent.session_id)
        if replay is not None:
            await replay.wait()
        return await self._carry_out(seq, intent)

    async def _carry_out(self, seq: int, intent: Intent) -> Awaitable[dict[str, Any]]:
        daemon, sid = self._daemon, intent.session_id
        result: Any = {}
        try:
            if intent.expires_at is not None and time.time() >= intent.expires_at:
                raise Expired("the message expired before it could be carried out")
            if intent.kind == "send":
                daemon.check_accepting()
                runner = daemon.runner(sid)
                return await runner.submit(intent.text or "", intent.send_id, seq=seq)
            if intent.kind == "start":
                result = await daemon.start_session(sid)
            elif intent.kind == "end":
                result = await daemon.end_session(sid)
            else:
                daemon.dismiss_error(sid)
        except HubError as exc:
            result = exc
        except Exception as exc:  # never leave an entry to be replayed forever
            log.exception("intent_failed", session=sid, kind=intent.kind)
            result = HubError(f"{intent.kind} failed: {type(exc).__name__}")
        self.finish(seq)
        return _settled(result)

    def finish(self, seq: int) -> None:
        if seq == UNJOURNALED:
            return
        try:
            self.journal.finish(seq)
        except StoreError as exc:
            log.error("journal_not_saved", error=str(exc))

    # -- after a crash ---------------------------------------------------------------------

    def pending(self) -> list[JournalEntry]:
        """Entries a previous run left unfinished: call before any bridge journals new ones.

        New intents for their sessions wait until the replay has queued all of these.
        """
        try:
            entries = self.journal.pending()
        except StoreError as exc:
            log.error("journal_unreadable", error=str(exc))
            return []
        for entry in entries:
            self._replayed.setdefault(entry.intent.session_id, asyncio.Event())
        return entries

    def replay(self, entries: list[JournalEntry]) -> None:
        """Carry out what a previous run journaled but did not finish, per session in order;
        new intents for those sessions wait until their replay has queued everything."""
        by_session: dict[str, list[JournalEntry]] = {}
        for entry in entries:
            by_session.setdefault(entry.intent.session_id, []).append(entry)
        for sid, items in by_session.items():
            done = self._replayed.setdefault(sid, asyncio.Event())
            task = asyncio.get_running_loop().create_task(
                self._replay_session(sid, items, done), name=f"journal-replay-{sid}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._ready.set()
        if entries:
            send_ids = [e.intent.send_id for e in entries if e.intent.send_id is not None]
            log.info("journal_replay", entries=len(entries), sessions=len(by_session),
                     send_ids=send_ids[:100])

    async def _replay_session(
        self, sid: str, items: list[JournalEntry], done: asyncio.Event
    ) -> None:
        try:
            for entry in items:
                if sid not in self._daemon.runners:
                    self.finish(entry.seq)
                    self._report(entry, HubError(f"unknown session {sid!r}"))
                    continue
                answer = await self._carry_out(entry.seq, entry.intent)
                waiter = asyncio.ensure_future(answer)
                waiter.add_done_callback(functools.partial(self._answered, entry))
        finally:
            done.set()
            self._replayed.pop(sid, None)

    def _answered(self, entry: JournalEntry, future: asyncio.Future[dict[str, Any]]) -> None:
        if not future.cancelled() and (exc := future.exception()) is not None:
            self._report(entry, exc)

    def _report(self, entry: JournalEntry, exc: BaseException) -> None:
        intent = entry.intent
        event = "send_failed" if intent.kind == "send" else "command_failed"
        if isinstance(exc, Expired):
            event = "expired_ignored"
        self._daemon.report(event, session=intent.session_id, error=str(exc), replayed=True)
