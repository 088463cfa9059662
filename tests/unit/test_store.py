"""The SQLite message store: order, bounds, restore, durability and send-id memory."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lkbridge.daemon.store import DATABASE_NAME, MessageStore, StoreError
from lkbridge.messages import MessageType, ReceivedMessage

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def msg(
    msg_id: str,
    text: str = "",
    *,
    final: bool = False,
    kind: MessageType = MessageType.AGENT_TRANSCRIPT,
    seconds: int = 0,
) -> ReceivedMessage:
    return ReceivedMessage(msg_id, T0 + timedelta(seconds=seconds), kind, text or msg_id, final)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MessageStore]:
    with MessageStore(tmp_path / DATABASE_NAME) as opened:
        yield opened


def ids(messages: list[ReceivedMessage]) -> list[str]:
    return [m.id for m in messages]


def test_wal_mode_and_schema(store: MessageStore) -> None:
    assert store.journal_mode == "wal"
    assert store.integrity_check() == []
    assert store.load("nobody") == []
    assert store.count("nobody") == 0


def test_round_trip_keeps_every_field(store: MessageStore) -> None:
    messages = [
        msg("a", "héllo ✓", final=True, kind=MessageType.USER_INPUT),
        msg("b", "partial", kind=MessageType.USER_TRANSCRIPT, seconds=1),
        msg("c", "", kind=MessageType.AGENT_TRANSCRIPT, seconds=2),
    ]
    for message in messages:
        store.upsert("s", message)
    assert store.load("s") == messages
    assert store.load("s")[0].timestamp.tzinfo is not None


def test_upsert_updates_in_place_and_keeps_first_position(store: MessageStore) -> None:
    store.upsert("s", msg("a", "he"))
    store.upsert("s", msg("b", "question"))
    store.upsert("s", msg("a", "hello there", final=True, seconds=9))
    loaded = store.load("s")
    assert ids(loaded) == ["a", "b"]
    assert loaded[0] == msg("a", "hello there", final=True, seconds=9)
    assert store.count("s") == 2


def test_sessions_are_independent(store: MessageStore) -> None:
    store.upsert("one", msg("x", "in one"))
    store.upsert("two", msg("x", "in two"))
    store.upsert("two", msg("y"))
    assert store.load("one") == [msg("x", "in one")]
    assert ids(store.load("two")) == ["x", "y"]
    assert store.session_ids() == ["one", "two"]


def test_history_limit_evicts_the_oldest(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db", history_limit=3) as store:
        for i in range(5):
            store.upsert("s", msg(f"m{i}"))
        assert ids(store.load("s")) == ["m2", "m3", "m4"]
        store.upsert("s", msg("m2", "updated"))  # an update evicts nothing
        assert ids(store.load("s")) == ["m2", "m3", "m4"]
        store.upsert("other", msg("o"))
        assert store.count("s") == 3 and store.count("other") == 1


def test_lowering_the_limit_applies_at_once_and_on_next_write(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with MessageStore(path, history_limit=10) as store:
        store.upsert_many("s", [msg(f"m{i}") for i in range(6)])
    with MessageStore(path, history_limit=2) as store:
        assert ids(store.load("s")) == ["m4", "m5"]  # load never returns more than the limit
        store.upsert("s", msg("m6"))
        assert store.count("s") == 2 and ids(store.load("s")) == ["m5", "m6"]


def test_zero_limit_keeps_nothing(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db", history_limit=0) as store:
        store.upsert("s", msg("a"))
        assert store.load("s") == [] and store.count("s") == 0


def test_upsert_many_is_one_transaction_in_order(store: MessageStore) -> None:
    store.upsert_many("s", [msg("a"), msg("b"), msg("a", "again")])
    assert [(m.id, m.text) for m in store.load("s")] == [("a", "again"), ("b", "b")]


def test_replace_restores_exactly(store: MessageStore) -> None:
    store.upsert_many("s", [msg("old1"), msg("old2")])
    store.upsert("keep", msg("k"))
    restored = [msg("r1", seconds=1), msg("r2", seconds=2), msg("r1", "dup wins", seconds=3)]
    store.replace("s", restored)
    assert [(m.id, m.text) for m in store.load("s")] == [("r1", "dup wins"), ("r2", "r2")]
    store.upsert("s", msg("new"))
    assert ids(store.load("s")) == ["r1", "r2", "new"]
    assert ids(store.load("keep")) == ["k"]
    store.replace("s", [])
    assert store.load("s") == []


def test_replace_respects_the_limit(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db", history_limit=2) as store:
        store.replace("s", [msg("a"), msg("b"), msg("c")])
        assert ids(store.load("s")) == ["b", "c"]


def test_delete_session(store: MessageStore) -> None:
    store.upsert("s", msg("a"))
    store.remember_send_id("s", "send-1")
    store.upsert("t", msg("b"))
    store.delete_session("s")
    assert store.load("s") == [] and not store.seen_send_id("s", "send-1")
    assert ids(store.load("t")) == ["b"]
    assert store.session_ids() == ["t"]


def test_reopen_after_close_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    store = MessageStore(path)
    store.upsert("s", msg("a", final=True))
    store.remember_send_id("s", "send-1")
    store.close()
    store.close()  # twice is fine
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.load("s")
    with MessageStore(path) as again:
        assert again.load("s") == [msg("a", final=True)]
        assert again.seen_send_id("s", "send-1")
        assert again.integrity_check() == []
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_in_directory_creates_the_state_directory(tmp_path: Path) -> None:
    state = tmp_path / "state" / "nested"
    with MessageStore.in_directory(state, history_limit=5) as store:
        store.upsert("s", msg("a"))
        assert store.history_limit == 5
    assert (state / DATABASE_NAME).exists()
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot create state directory"):
        MessageStore.in_directory(blocker / "sub")


def test_committed_writes_are_visible_to_another_connection_at_once(
    store: MessageStore,
) -> None:
    store.upsert("s", msg("a", "first"))
    other = sqlite3.connect(store.path)
    try:
        rows = other.execute("SELECT id, text FROM messages WHERE session_id = 's'").fetchall()
        assert rows == [("a", "first")]
        assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        other.close()
    with MessageStore(store.path) as second:
        assert second.load("s") == [msg("a", "first")]


def test_copy_of_the_files_while_open_holds_every_committed_write(
    store: MessageStore, tmp_path: Path
) -> None:
    # What a crash leaves on disk: the main file plus the WAL, never checkpointed or closed.
    for i in range(20):
        store.upsert("s", msg(f"m{i}"))
    store.upsert("s", msg("m3", "updated", final=True))
    crash = tmp_path / "crash"
    crash.mkdir()
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{store.path}{suffix}")
        if source.exists():
            shutil.copy(source, crash / f"{DATABASE_NAME}{suffix}")
    assert (crash / f"{DATABASE_NAME}-wal").stat().st_size > 0  # the data really is in the WAL
    with MessageStore(crash / DATABASE_NAME) as recovered:
        assert recovered.integrity_check() == []
        loaded = recovered.load("s")
        assert ids(loaded) == [f"m{i}" for i in range(20)]
        assert loaded[3] == msg("m3", "updated", final=True)


def test_kill_9_right_after_a_write_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    script = textwrap.dedent(
        f"""
        import sys, time
        from datetime import UTC, datetime
        from lkbridge.messages import MessageType, ReceivedMessage
        from lkbridge.daemon.store import MessageStore
        store = MessageStore({str(path)!r})
        for i in range(50):
            store.upsert("s", ReceivedMessage(
                f"m{{i}}", datetime.now(UTC), MessageType.AGENT_TRANSCRIPT, "t" * i, i % 2 == 0))
        store.remember_send_id("s", "send-1")
        print("published", flush=True)  # the caller publishes only after the write returns
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "published"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with MessageStore(path) as store:
        loaded = store.load("s")
        assert ids(loaded) == [f"m{i}" for i in range(50)]
        assert loaded[49].text == "t" * 49 and loaded[48].final
        assert store.seen_send_id("s", "send-1")
        assert store.integrity_check() == []


def test_send_ids_are_remembered_once(store: MessageStore) -> None:
    assert not store.seen_send_id("s", "x", now=1000.0)
    assert store.remember_send_id("s", "x", now=1000.0) is True
    assert store.seen_send_id("s", "x", now=1001.0)
    assert store.remember_send_id("s", "x", now=1002.0) is False  # a duplicate
    assert not store.seen_send_id("other", "x", now=1001.0)  # per session


def test_send_ids_expire_after_the_ttl(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db", send_id_ttl=60.0) as store:
        store.remember_send_id("s", "x", now=1000.0)
        assert store.seen_send_id("s", "x", now=1059.0)
        assert not store.seen_send_id("s", "x", now=1061.0)
        assert store.remember_send_id("s", "x", now=1061.0) is True  # accepted again, re-dated
        assert store.seen_send_id("s", "x", now=1100.0)


def test_send_ids_are_bounded_per_session(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db", send_id_limit=3) as store:
        for i in range(5):
            store.remember_send_id("s", f"id{i}", now=1000.0 + i)
        store.remember_send_id("t", "other", now=1000.0)
        assert [store.seen_send_id("s", f"id{i}", now=1010.0) for i in range(5)] == [
            False,
            False,
            True,
            True,
            True,
        ]
        assert store.seen_send_id("t", "other", now=1010.0)


def test_send_ids_use_wall_clock_by_default(store: MessageStore) -> None:
    assert store.remember_send_id("s", "now")
    assert store.seen_send_id("s", "now")


def test_integrity_check_reports_corruption(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    with MessageStore(path) as store:
        store.upsert_many("s", [msg(f"m{i}", "x" * 500) for i in range(200)])
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page + 100, 2 * page + 600):  # scribble over a b-tree page
        data[offset] = 0x55
    path.write_bytes(bytes(data))
    with MessageStore(path) as store:
        problems = store.integrity_check()
    assert problems and "out of range" in problems[0]


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="cannot use history database"):
        MessageStore(path)


def test_reply_to_is_kept(store: MessageStore) -> None:
    reply = ReceivedMessage("SG_r", T0, MessageType.AGENT_TRANSCRIPT, "yes", True, reply_to="m1")
    store.upsert("s", reply)
    assert store.load("s") == [reply]
    store.upsert("s", ReceivedMessage("SG_r", T0, MessageType.AGENT_TRANSCRIPT, "yes!", True))
    assert store.load("s")[0].reply_to is None  # an update writes the whole message


def test_a_version_1_database_is_migrated_and_keeps_its_messages(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE messages (session_id TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,"
        " timestamp TEXT NOT NULL, type TEXT NOT NULL, text TEXT NOT NULL, final INTEGER NOT NULL,"
        " PRIMARY KEY (session_id, id)) WITHOUT ROWID;"
        "INSERT INTO messages VALUES ('s', 'old', 1, '2026-01-02T03:04:05+00:00',"
        " 'agent_transcript', 'from version 1', 1);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    with MessageStore(path) as store:
        [old] = store.load("s")
        assert (old.text, old.final, old.reply_to) == ("from version 1", True, None)
        store.upsert("s", msg("new", final=True))
        assert ids(store.load("s")) == ["old", "new"]
    with MessageStore(path) as store:  # reopening a migrated database changes nothing
        assert ids(store.load("s")) == ["old", "new"]
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == 3  # reply_to, then the journal
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "journal" in tables
    check.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        MessageStore(path)


def test_unreadable_rows_are_skipped(store: MessageStore) -> None:
    store.upsert("s", msg("good"))
    other = sqlite3.connect(store.path)
    other.execute(
        "INSERT INTO messages VALUES ('s', 'future', 99, '2026-01-01T00:00:00+00:00',"
        " 'hologram', 't', 0, NULL)"
    )
    other.commit()
    other.close()
    assert ids(store.load("s")) == ["good"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MessageStore(tmp_path / "db", history_limit=-1)
    with pytest.raises(ValueError):
        MessageStore(tmp_path / "db", synchronous="OFF")  # type: ignore[arg-type]


def test_synchronous_is_normal_between_durable_commits(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db") as store:
        store.upsert("s", msg("a", final=False))
        assert store._conn().execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        store.upsert("s", msg("a", final=True))  # durable: FULL only around its commit
        assert store._conn().execute("PRAGMA synchronous").fetchone() == (1,)
    with MessageStore(tmp_path / "db", synchronous="FULL") as store:
        store.upsert("s", msg("b", final=False))
        assert store._conn().execute("PRAGMA synchronous").fetchone() == (2,)


FSYNC_SCRIPT = """
import sys
from datetime import UTC, datetime
from lkbridge.bridges.hub import Intent
from lkbridge.daemon.journal import Journal
from lkbridge.daemon.store import MessageStore
from lkbridge.messages import MessageType, ReceivedMessage
store = MessageStore(sys.argv[1])
journal = Journal(store)
def m(i, final):
    return ReceivedMessage(id=f"m{i}", timestamp=datetime.now(UTC),
                           type=MessageType.AGENT_TRANSCRIPT, text="x" * i, final=final)
print("mark", flush=True)
what = sys.argv[2]
for i in range(20):
    if what == "partial":
        store.upsert("s", m(1, False))
    elif what == "final":
        store.upsert("s", m(i, True))
    elif what == "journal":
        journal.add([Intent("s", "send", "hi")] * 5)
    elif what == "finish":
        journal.finish(i + 1, send_id=("s", f"id{i}"))
"""


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
@pytest.mark.parametrize(("what", "expected"), [
    ("partial", 0), ("final", 20), ("journal", 20), ("finish", 0),
])  # fmt: skip
def test_fsyncs_per_write(tmp_path: Path, what: str, expected: int) -> None:
    """A growing transcript is never fsynced; a final message or a journal batch once each."""
    script = tmp_path / "writes.py"
    script.write_text(FSYNC_SCRIPT)
    db = tmp_path / "db"
    for step in ("journal", what):  # the first run creates the schema (and entries to finish)
        out = subprocess.run(
            ["strace", "-f", "-e", "trace=fsync,fdatasync", "-o", str(tmp_path / "trace"),
             sys.executable, str(script), str(db), step],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    assert "mark" in out.stdout
    calls = (tmp_path / "trace").read_text().splitlines()
    syncs = [c for c in calls if "fsync(" in c or "fdatasync(" in c]
    # Opening the store writes nothing durable once the schema exists; closing checkpoints
    # (a few syncs of the WAL and the database, at most 4).
    assert expected <= len(syncs) <= expected + 4, (what, syncs)


def test_use_from_another_thread_is_refused(store: MessageStore) -> None:
    errors: list[BaseException] = []

    def use() -> None:
        try:
            store.load("s")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    assert len(errors) == 1 and isinstance(errors[0], StoreError)


def test_busy_writer_elsewhere_surfaces_as_store_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with MessageStore(path) as store:
        blocker = sqlite3.connect(path, isolation_level=None, timeout=0)
        blocker.execute("BEGIN IMMEDIATE")
        store._conn().execute("PRAGMA busy_timeout = 50")
        try:
            with pytest.raises(StoreError, match="locked"):
                store.upsert("s", msg("a"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        store.upsert("s", msg("a"))  # works again once the other writer is gone
        assert ids(store.load("s")) == ["a"]
