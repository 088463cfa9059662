"""Durable per-session message history and send-id memory in SQLite (the only sqlite3 user)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Literal

from lkbridge.daemon.clock import SteadyClock
from lkbridge.daemon.syncer import WalSyncer
from lkbridge.messages import MessageType, ReceivedMessage

__all__ = ["DATABASE_NAME", "MessageStore", "StoreError"]

DATABASE_NAME = "lkbridge.sqlite3"
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    session_id TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    timestamp TEXT NOT NULL,
    type TEXT NOT NULL,
    text TEXT NOT NULL,
    final INTEGER NOT NULL,
    reply_to TEXT,
    PRIMARY KEY (session_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS messages_by_seq ON messages (session_id, seq);
CREATE TABLE IF NOT EXISTS send_ids (
    session_id TEXT NOT NULL,
    send_id TEXT NOT NULL,
    accepted_at REAL NOT NULL,
    PRIMARY KEY (session_id, send_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS send_ids_by_time ON send_ids (session_id, accepted_at);
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT,
    send_id TEXT,
    expires_at REAL,
    digest BLOB,
    received_at REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS journal_by_digest ON journal (digest);
CREATE INDEX IF NOT EXISTS journal_pending ON journal (done, seq);
"""

_MIGRATIONS = {
    # version 1 -> 2: agent replies say which user_input they answer
    2: "ALTER TABLE messages ADD COLUMN reply_to TEXT",
    # version 2 -> 3: the command journal (its tables come with _SCHEMA, which always runs;
    # the version keeps an older lkbridge, which would not replay it, from opening the file)
    3: "SELECT 1",
}


# SQLite's primary result codes that mean the file itself is damaged (not the disk or rights).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class StoreError(Exception):
    """The history database could not be opened, read or written.

    `corrupt` is true when SQLite says the file is damaged or not a database at all (moving it
    aside helps); false for a full or read-only disk, missing rights, and the like.
    """

    def __init__(self, message: str, *, corrupt: bool = False) -> None:
        super().__init__(message)
        self.corrupt = corrupt


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc)


class MessageStore:
    """Message history per session (first-arrival order, bounded) and accepted send ids.

    Durability contract (WAL, synchronous=NORMAL): every write returns only after SQLite
    committed it, so a killed process (`kill -9`) never loses it. A *durable* write (final
    messages, history replacements, journal entries) also asks for an fsync of the WAL, made in
    a worker thread (WalSyncer: one fsync for every burst of requests, never on the event
    loop); `durable()` waits for it, after which everything committed before survives a power
    cut too. Growing (partial) transcript updates never ask for one. `synchronous="FULL"`
    makes SQLite fsync every commit inline instead.
    Callers must store a message *before* publishing it; then a `kill -9` at any moment never
    loses anything that was already published.

    One connection, used only from the thread that opened it (the asyncio loop thread; other
    threads get StoreError): each call is a short local transaction, fast enough for the loop.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        history_limit: int = 1000,
        send_id_limit: int = 10_000,
        send_id_ttl: float = 7 * 24 * 3600.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        verify: bool = False,
    ) -> None:
        if history_limit < 0 or send_id_limit < 1 or send_id_ttl <= 0:
            raise ValueError("history_limit >= 0, send_id_limit >= 1 and send_id_ttl > 0")
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError("synchronous must be NORMAL or FULL")
        self.path = Path(path)
        self.history_limit = history_limit
        self.send_id_limit = send_id_limit
        self.send_id_ttl = send_id_ttl
        self.synchronous = synchronous
        self.syncer = WalSyncer(Path(f"{self.path}-wal"))
        self._last_sync: asyncio.Future[None] | None = None
        self._clock: SteadyClock | None = None  # send-id times (see _send_id_now)
        self.in_memory = str(path) == ":memory:"
        self.write_error: str | None = None  # the last write's failure, until one succeeds
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE … COMMIT) below.
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, isolation_level=None, timeout=5.0
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open history database {self.path}: {exc}", corrupt=_is_corrupt(exc)
            ) from exc
        try:
            if verify:
                # Damaged pages may only show up when read: check them all now, at start.
                problems = [str(r[0]) for r in self._db.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StoreError(
                        f"history database {self.path} is damaged: {'; '.join(problems)}",
                        corrupt=True,
                    )
            if not self.in_memory:
                self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self.transaction() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"history database {self.path} has schema version {version}; this"
                        f" lkbridge understands up to {SCHEMA_VERSION}"
                    )
                columns = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                if columns:  # an existing database: bring it up to this version
                    for target in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                        if target == 2 and "reply_to" in columns:
                            continue
                        db.execute(_MIGRATIONS[target])
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            self._db = None
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"cannot use history database {self.path}: {exc}", corrupt=_is_corrupt(exc)
            ) from exc

    @classmethod
    def in_memory_copy(cls, source: Path | None = None, *, history_limit: int = 1000) -> MessageStore:
        """A store that lives in memory only, starting with what `source` holds if it can be read
        (a read-only disk keeps its history readable); empty otherwise."""
        store = cls(":memory:", history_limit=history_limit)
        if source is not None and source.exists():
            try:
                # immutable: a read-only directory cannot hold the -shm file a WAL reader needs.
                src = sqlite3.connect(f"file:{source}?mode=ro&immutable=1", uri=True, timeout=1.0)
                try:
                    src.backup(store._conn())
                finally:
                    src.close()
            except sqlite3.Error:
                store.close()
                store = cls(":memory:", history_limit=history_limit)
        return store

    @property
    def persisted(self) -> bool:
        """Whether what is stored now reaches the disk (not in memory, last write succeeded)."""
        return not self.in_memory and self.write_error is None

    @classmethod
    def in_directory(cls, directory: str | Path, *, history_limit: int = 1000) -> MessageStore:
        """Open (creating if needed) the database in the daemon's state directory."""
        folder = Path(directory)
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create state directory {folder}: {exc}") from exc
        return cls(folder / DATABASE_NAME, history_limit=history_limit)

    # -- plumbing ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the history store is closed")
        return self._db

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction; `durable` asks the syncer for an fsync after COMMIT.

        With an event loop running the fsync happens in the syncer's thread (`durable()` waits
        for it); without one, inline before this returns.
        """
        db = self._conn()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if db.in_transaction:  # SQLite may have rolled back by itself (disk full)
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            if db.in_transaction:
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            self.write_error = str(exc)
            raise StoreError(f"history database {self.path}: {exc}", corrupt=_is_corrupt(exc)) from exc
        self.write_error = None
        if durable and self.synchronous != "FULL" and not self.in_memory:
            synced = self.syncer.request()
            if synced is not None:
                synced.add_done_callback(_retrieve)
            self._last_sync = synced

    async def durable(self) -> None:
        """Wait until every durable write made so far is on disk (raises StoreError if not)."""
        synced = self._last_sync
        if synced is None:
            return
        try:
            await asyncio.shield(synced)
        except OSError as exc:
            raise StoreError(f"history database {self.path}: fsync failed: {exc}") from exc

    def read(self, sql: str, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        try:
            return self._conn().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"history database {self.path}: {exc}", corrupt=_is_corrupt(exc)) from exc

    @property
    def journal_mode(self) -> str:
        return str(self.read("PRAGMA journal_mode", ())[0][0])

    # -- messages ---------------------------------------------------------------------------

    def upsert(self, session_id: str, message: ReceivedMessage) -> None:
        """Insert a message, or update it in place (keeping its first-arrival position)."""
        self.upsert_many(session_id, (message,))

    def upsert_many(self, session_id: str, messages: Iterable[ReceivedMessage]) -> None:
        """Upsert several messages in one transaction, in order (durable if any is final)."""
        batch = list(messages)
        with self.transaction(durable=any(m.final for m in batch)) as db:
            inserted = False
            for message in batch:
                inserted |= _upsert(db, session_id, message)
            if inserted:
                self._evict(db, session_id)

    def _evict(self, db: sqlite3.Connection, session_id: str) -> None:
        if self.history_limit == 0:
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            return
        db.execute(
            "DELETE FROM messages WHERE session_id = ? AND seq <= ("
            " SELECT seq FROM messages WHERE session_id = ?"
            " ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (session_id, session_id, self.history_limit),
        )

    def load(self, session_id: str) -> list[ReceivedMessage]:
        """The session's history in first-arrival order (at most history_limit, newest kept)."""
        rows = self.read(
            "SELECT id, timestamp, type, text, final, reply_to FROM ("
            " SELECT * FROM messages WHERE session_id = ? ORDER BY seq DESC LIMIT ?"
            ") ORDER BY seq",
            (session_id, self.history_limit),
        )
        messages: list[ReceivedMessage] = []
        for msg_id, timestamp, msg_type, text, final, reply_to in rows:
            try:
                messages.append(
                    ReceivedMessage(
                        id=str(msg_id),
                        timestamp=datetime.fromisoformat(str(timestamp)),
                        type=MessageType(str(msg_type)),
                        text=str(text),
                        final=bool(final),
                        reply_to=str(reply_to) if reply_to is not None else None,
                    )
                )
            except ValueError:
                continue  # a row this version cannot read (written by a newer one): skip it
        return messages

    def replace(self, session_id: str, messages: Iterable[ReceivedMessage]) -> None:
        """Make the session's history exactly these messages (restore); later ids win."""
        with self.transaction(durable=True) as db:
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            for message in messages:
                _upsert(db, session_id, message)
            self._evict(db, session_id)

    def count(self, session_id: str) -> int:
        """How many messages are stored for the session."""
        rows = self.read("SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,))
        return int(str(rows[0][0]))

    def session_ids(self) -> list[str]:
        """Sessions that have stored messages or send ids."""
        rows = self.read(
            "SELECT session_id FROM messages UNION SELECT session_id FROM send_ids ORDER BY 1", ()
        )
        return [str(row[0]) for row in rows]

    def delete_session(self, session_id: str) -> None:
        """Forget everything stored for a session (its unfinished journal entries too)."""
        with self.transaction(durable=True) as db:
            db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM send_ids WHERE session_id = ?", (session_id,))
            db.execute("DELETE FROM journal WHERE session_id = ?", (session_id,))

    # -- idempotent sends -------------------------------------------------------------------

    def _send_id_now(self) -> float:
        """The time send ids are stamped and expired by: a SteadyClock, so wall-clock jumps
        while the daemon runs neither expire ids early nor keep them, and never below the
        newest stamp already stored, so a clock set back between runs cannot make new ids
        look older than old ones (the per-session limit drops the oldest first)."""
        if self._clock is None:
            newest = self.read("SELECT MAX(accepted_at) FROM send_ids", ())[0][0]
            self._clock = SteadyClock(floor=float(newest) if isinstance(newest, int | float) else 0.0)
        return self._clock.now()

    def seen_send_id(self, session_id: str, send_id: str, *, now: float | None = None) -> bool:
        """Whether a send with this id was already accepted (within the TTL)."""
        cutoff = (self._send_id_now() if now is None else now) - self.send_id_ttl
        rows = self.read(
            "SELECT 1 FROM send_ids WHERE session_id = ? AND send_id = ? AND accepted_at > ?",
            (session_id, send_id, cutoff),
        )
        return bool(rows)

    def remember_send_id(self, session_id: str, send_id: str, *, now: float | None = None) -> bool:
        """Record an accepted send id; False if it was already recorded (a duplicate).

        Keeps at most send_id_limit ids per session and none older than send_id_ttl.
        """
        with self.transaction() as db:
            return self.remember_send_id_in(db, session_id, send_id, now=now)

    def upsert_in(self, db: sqlite3.Connection, session_id: str, message: ReceivedMessage) -> None:
        """upsert() inside a transaction the caller holds (see journal.py)."""
        if _upsert(db, session_id, message):
            self._evict(db, session_id)

    def remember_send_id_in(
        self, db: sqlite3.Connection, session_id: str, send_id: str, *, now: float | None = None
    ) -> bool:
        """remember_send_id() inside a transaction the caller holds (see journal.py)."""
        at = self._send_id_now() if now is None else now
        db.execute(
            "DELETE FROM send_ids WHERE session_id = ? AND accepted_at <= ?",
            (session_id, at - self.send_id_ttl),
        )
        cursor = db.execute(
            "INSERT OR IGNORE INTO send_ids (session_id, send_id, accepted_at)"
            " VALUES (?, ?, ?)",
            (session_id, send_id, at),
        )
        if cursor.rowcount == 0:
            return False
        db.execute(
            "DELETE FROM send_ids WHERE session_id = ? AND send_id IN ("
            " SELECT send_id FROM send_ids WHERE session_id = ?"
            " ORDER BY accepted_at DESC LIMIT -1 OFFSET ?)",
            (session_id, session_id, self.send_id_limit),
        )
        return True

    # -- maintenance ------------------------------------------------------------------------

    def integrity_check(self) -> list[str]:
        """SQLite's integrity check: an empty list when the database is sound."""
        rows = self.read("PRAGMA integrity_check", ())
        problems = [str(row[0]) for row in rows]
        return [] if problems == ["ok"] else problems

    def close(self) -> None:
        """Checkpoint the WAL and close; safe to call twice."""
        db, self._db = self._db, None
        if db is None:
            return
        self.syncer.close()
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass  # another connection may hold the WAL; closing is still clean
        finally:
            db.close()

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> MessageStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a sync's outcome seen (the syncer logs failures; durable() raises them)."""
    if not future.cancelled():
        future.exception()


def _upsert(db: sqlite3.Connection, session_id: str, message: ReceivedMessage) -> bool:
    """Upsert one message; True when it was new."""
    values = (
        message.timestamp.isoformat(),
        message.type.value,
        message.text,
        int(message.final),
        message.reply_to,
    )
    cursor = db.execute(
        "UPDATE messages SET timestamp = ?, type = ?, text = ?, final = ?, reply_to = ?"
        " WHERE session_id = ? AND id = ?",
        (*values, session_id, message.id),
    )
    if cursor.rowcount:
        return False
    db.execute(
        "INSERT INTO messages (session_id, id, seq, timestamp, type, text, final, reply_to)"
        " VALUES (?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session_id = ?),"
        " ?, ?, ?, ?, ?)",
        (session_id, message.id, session_id, *values),
    )
    return True
