"""The command journal: sends and commands kept on disk from receipt until they are carried out."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from lkbridge.bridges.hub import Intent
from lkbridge.daemon.store import MessageStore
from lkbridge.messages import ReceivedMessage

__all__ = ["DONE_KEPT", "Journal", "JournalEntry"]

DONE_KEPT = 10_000
"""Finished entries kept (newest first) so a broker's redelivery of one is recognised."""
PRUNE_EVERY = 64
"""Batches between two prunings of finished entries."""


@dataclass(frozen=True)
class JournalEntry:
    """An intent as stored, with its place in the journal (`seq`, increasing)."""

    seq: int
    intent: Intent
    received_at: float


class Journal:
    """Durable intents on the daemon's store (the same SQLite file and connection).

    `add()` commits (a killed process keeps it) and asks for an fsync of the whole batch; the
    store's `durable()` says when it is on disk: only then may the bridge acknowledge the
    messages to the broker (carrying them out may start before). `finish()` marks an entry carried out (or
    answered with a refusal) and, for a delivered send with an id, records the id in the same
    transaction, so the journal and the idempotency ids never disagree. It is not fsynced:
    a killed process keeps it; a power cut may lose the last ones, and those sends are then
    carried out again after the reboot (docs/mqtt.md, "What survives").
    """

    def __init__(self, store: MessageStore) -> None:
        self._store = store
        self._adds = 0

    def add(self, intents: Sequence[Intent], *, now: float | None = None) -> list[int]:
        """Store intents in order, durably; returns their sequence numbers."""
        if not intents:
            return []
        at = time.time() if now is None else now
        seqs: list[int] = []
        with self._store.transaction(durable=True) as db:
            for intent in intents:
                cursor = db.execute(
                    "INSERT INTO journal (session_id, kind, text, send_id, expires_at, digest,"
                    " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (intent.session_id, intent.kind, intent.text, intent.send_id,
                     intent.expires_at, intent.digest, at),
                )  # fmt: skip
                seqs.append(int(cursor.lastrowid or 0))
            self._adds += 1
            if self._adds % PRUNE_EVERY == 0:
                # Finished entries older than the newest DONE_KEPT (a primary-key range: cheap).
                db.execute(
                    "DELETE FROM journal WHERE seq <= ? AND done = 1", (seqs[-1] - DONE_KEPT,)
                )
        return seqs

    def finish(
        self, seq: int, *, send_id: tuple[str, str] | None = None,
        sent: tuple[str, ReceivedMessage] | None = None,
    ) -> None:  # fmt: skip
        """Mark an entry carried out; `send_id=(session, id)` also remembers a delivered id and
        `sent=(session, message)` stores the sent text in the history, in the same transaction
        (the loopback copy follows later: a kill in between must not leave it out)."""
        with self._store.transaction() as db:
            db.execute("UPDATE journal SET done = 1, text = NULL WHERE seq = ?", (seq,))
            if send_id is not None:
                self._store.remember_send_id_in(db, *send_id)
            if sent is not None:
                self._store.upsert_in(db, *sent)

    def pending(self) -> list[JournalEntry]:
        """Entries not yet carried out, in the order they were received."""
        rows = self._store.read(
            "SELECT seq, session_id, kind, text, send_id, expires_at, digest, received_at"
            " FROM journal WHERE done = 0 ORDER BY seq",
            (),
        )
        entries = []
        for seq, session_id, kind, text, send_id, expires_at, dig, received_at in rows:
            try:
                intent = Intent(
                    session_id=str(session_id),
                    kind=str(kind),
                    text=None if text is None else str(text),
                    send_id=None if send_id is None else str(send_id),
                    expires_at=None if expires_at is None else float(str(expires_at)),
                    digest=dig if isinstance(dig, bytes) else None,
                )
            except ValueError:
                continue  # a kind this version does not know (written by a newer one)
            entries.append(JournalEntry(int(str(seq)), intent, float(str(received_at))))
        return entries

    def has(self, key: bytes) -> bool:
        """Whether a message with this digest was journaled (pending or recently finished)."""
        return bool(self._store.read("SELECT 1 FROM journal WHERE digest = ? LIMIT 1", (key,)))
