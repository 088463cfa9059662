"""The command journal on the store: order, finishing with the send id, recognising repeats."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lkbridge.bridges.hub import Intent
from lkbridge.bridges.mqtt.intake import Intake, message_digest
from lkbridge.daemon.journal import DONE_KEPT, PRUNE_EVERY, Journal
from lkbridge.daemon.store import MessageStore


@pytest.fixture
def store(tmp_path: Path) -> MessageStore:
    return MessageStore(tmp_path / "db")


def test_pending_entries_come_back_in_order_after_a_reopen(tmp_path: Path) -> None:
    with MessageStore(tmp_path / "db") as store:
        journal = Journal(store)
        seqs = journal.add([
            Intent("a", "send", "one", "id-1", digest=b"1" * 16),
            Intent("b", "start"),
            Intent("a", "send", "two", None, expires_at=123.5),
        ])  # fmt: skip
        assert seqs == sorted(seqs) and len(set(seqs)) == 3
        journal.finish(seqs[1])
    with MessageStore(tmp_path / "db") as store:
        pending = Journal(store).pending()
    assert [(e.intent.session_id, e.intent.kind, e.intent.text) for e in pending] == [
        ("a", "send", "one"), ("a", "send", "two"),
    ]  # fmt: skip
    assert pending[0].intent.send_id == "id-1" and pending[1].intent.expires_at == 123.5


def test_finishing_a_send_remembers_its_id_in_the_same_transaction(store: MessageStore) -> None:
    journal = Journal(store)
    (seq,) = journal.add([Intent("a", "send", "hi", "k1")])
    assert not store.seen_send_id("a", "k1")
    journal.finish(seq, send_id=("a", "k1"))
    assert store.seen_send_id("a", "k1") and journal.pending() == []


def test_a_repeat_is_recognised_by_its_digest_also_once_finished(store: MessageStore) -> None:
    journal = Journal(store)
    key = message_digest("base/a/send", b"hello")
    assert key != message_digest("base/b/send", b"hello")
    (seq,) = journal.add([Intent("a", "send", "hello", digest=key)])
    journal.finish(seq)
    assert journal.has(key) and not journal.has(message_digest("base/a/send", b"other"))


def test_finished_entries_are_pruned(store: MessageStore) -> None:
    journal = Journal(store)
    seqs = journal.add([Intent("a", "end")] * (DONE_KEPT + 5))
    for seq in seqs[1:]:
        journal.finish(seq)  # the first one stays pending: never pruned
    for _ in range(PRUNE_EVERY - 1):
        journal.add([Intent("b", "end")])
    (done,) = store.read("SELECT COUNT(*) FROM journal WHERE done = 1", ())[0]
    assert done < DONE_KEPT
    assert journal.pending()[0].seq == seqs[0]


def test_deleting_a_session_forgets_its_journal(store: MessageStore) -> None:
    journal = Journal(store)
    journal.add([Intent("a", "send", "x"), Intent("b", "send", "y")])
    store.delete_session("a")
    assert [e.intent.session_id for e in journal.pending()] == ["b"]


async def test_durable_waits_for_the_fsync_made_off_the_loop(store: MessageStore) -> None:
    journal = Journal(store)
    before = store.syncer.syncs
    journal.add([Intent("a", "send", "x")])
    await store.durable()
    assert store.syncer.syncs == before + 1
    # A burst of durable writes shares fsyncs (at most one running, one waiting).
    for _ in range(20):
        journal.add([Intent("a", "send", "y")])
    await asyncio.wait_for(store.durable(), 10)
    assert store.syncer.syncs <= before + 3


def test_intake_counts_per_session_and_in_all() -> None:
    intake = Intake()
    queued: list[int] = []
    intake.add("t", Intent("a", "start"), queued.append)
    intake.add("t", Intent("b", "end"), queued.append)
    assert intake.count("a") == 1 and intake.count("c") == 0 and intake.count() == 2
    intake.intents[1].enqueue(7)
    assert queued == [7]


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown intent kind"):
        Intent("a", "reboot")
