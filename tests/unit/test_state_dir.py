"""The state directory at start (damaged, unusable), broken overrides, and the reload verdict."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from lkbridge.config.files import OVERRIDES_FILE
from lkbridge.daemon import systemd
from lkbridge.daemon.core import Daemon
from lkbridge.daemon.state import move_aside, open_history
from lkbridge.daemon.store import DATABASE_NAME, MessageStore, StoreError
from lkbridge.messages import MessageType, ReceivedMessage


def _msg(n: int) -> ReceivedMessage:
    return ReceivedMessage(
        id=f"m{n}", timestamp=datetime(2026, 1, 1, tzinfo=UTC), type=MessageType.USER_INPUT,
        text=f"message {n}", final=True,
    )


def test_a_sound_database_is_used_as_is(tmp_path: Path) -> None:
    with MessageStore(tmp_path / DATABASE_NAME) as store:
        store.upsert("s", _msg(1))
    opening = open_history(tmp_path, history_limit=10)
    try:
        assert opening.notices == [] and opening.moved_aside is None
        assert opening.status() == {"persisted": True, "database": str(tmp_path / DATABASE_NAME),
                                    "problem": None, "moved_aside": None}
        assert [m.id for m in opening.store.load("s")] == ["m1"]
    finally:
        opening.store.close()


def test_random_bytes_are_moved_aside_and_a_new_database_made(tmp_path: Path) -> None:
    junk = os.urandom(10_000)
    (tmp_path / DATABASE_NAME).write_bytes(junk)
    opening = open_history(tmp_path, history_limit=10)
    try:
        assert opening.moved_aside is not None and opening.moved_aside.read_bytes() == junk
        assert opening.moved_aside.name.startswith("lkbridge.sqlite3.corrupt-")
        assert [n["event"] for n in opening.notices] == ["history_database_moved_aside"]
        assert opening.store.persisted
        opening.store.upsert("s", _msg(1))
        assert opening.store.count("s") == 1
    finally:
        opening.store.close()


def test_an_unusable_directory_gives_history_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    opening = open_history(blocker / "state", history_limit=10)
    try:
        assert opening.store.in_memory and not opening.store.persisted
        status = opening.status()
        assert status["persisted"] is False and "cannot create state directory" in status["problem"]
        assert [n["event"] for n in opening.notices] == ["history_not_persisted"]
        opening.store.upsert("s", _msg(1))  # still works, in memory
        assert opening.store.count("s") == 1
    finally:
        opening.store.close()


def test_in_memory_copy_keeps_what_a_readable_database_holds(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    with MessageStore(path) as store:
        store.upsert_many("s", [_msg(1), _msg(2)])
    copy = MessageStore.in_memory_copy(path, history_limit=10)
    try:
        assert [m.id for m in copy.load("s")] == ["m1", "m2"]
        copy.upsert("s", _msg(3))
    finally:
        copy.close()
    with MessageStore(path) as store:
        assert store.count("s") == 2, "the source is never written"


def test_a_failing_write_marks_history_not_persisted_until_one_succeeds(tmp_path: Path) -> None:
    with MessageStore(tmp_path / DATABASE_NAME) as store:
        store._conn().execute("PRAGMA query_only=ON")  # every write now fails, as on a bad disk
        with pytest.raises(StoreError):
            store.upsert("s", _msg(1))
        assert not store.persisted and store.write_error
        store._conn().execute("PRAGMA query_only=OFF")
        store.upsert("s", _msg(1))
        assert store.persisted and store.write_error is None


def test_damaged_pages_are_found_at_open(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    with MessageStore(path) as store:
        store.upsert_many("s", [_msg(n) for n in range(400)])
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 4] = b"\xff" * (4096 * 2)
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError) as raised:
        MessageStore(path, verify=True).close()
    assert raised.value.corrupt


def test_move_aside_takes_the_wal_along_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "x.sqlite3"
    now = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    for _ in range(2):
        path.write_text("db")
        path.with_name("x.sqlite3-wal").write_text("wal")
        first = move_aside(path, "corrupt", now=now)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "x.sqlite3.corrupt-20260501T120000Z", "x.sqlite3.corrupt-20260501T120000Z-2",
        "x.sqlite3.corrupt-20260501T120000Z-2-wal", "x.sqlite3.corrupt-20260501T120000Z-wal",
    ]
    assert first.name.endswith("-2")


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [mqtt]
        host = "127.0.0.1"
        [state]
        directory = "{tmp_path / 'state'}"
        [sessions.talk]
        autostart = false
        [sessions.talk.token]
        source = "literal"
        server_url = "ws://127.0.0.1:1"
        participant_token = "x.y.z"
        """))
    return path


def test_a_broken_overrides_file_is_ignored_then_moved_aside_before_a_write(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "state").mkdir()
    overrides = tmp_path / "state" / OVERRIDES_FILE
    overrides.write_text("removed = [\n")
    daemon = Daemon(config)
    try:
        assert list(daemon.config.sessions) == ["talk"]
        assert daemon.overrides_problem and "invalid TOML" in daemon.overrides_problem
        assert daemon.state_status()["overrides_problem"] == daemon.overrides_problem
        assert [n["event"] for n in daemon._startup_notices] == ["overrides_ignored"]
        daemon._write_overrides(daemon.overrides.without_session("talk", daemon.base_session_ids))
        kept = list(overrides.parent.glob("overrides.toml.broken-*"))
        assert len(kept) == 1 and kept[0].read_text() == "removed = [\n"
        assert daemon.overrides_problem is None and "talk" in overrides.read_text()
    finally:
        daemon.store.close()


def test_status_line_says_what_is_wrong(tmp_path: Path) -> None:
    daemon = Daemon(_config(tmp_path))
    try:
        assert daemon._status_line([]) == "0/0 session(s) connected"
        daemon.reload_error = "config.toml: invalid TOML"
        daemon.overrides_problem = "overrides.toml: invalid TOML"
        line = daemon._status_line([])
        assert "reload failed, previous config kept: config.toml: invalid TOML" in line
        assert "overrides file ignored" in line
    finally:
        daemon.store.close()


_CHILD = """
import signal, sys, time
from lkbridge.daemon import systemd
verdict = sys.argv[1] == "ok"
signal.signal(signal.SIGHUP, lambda *a: systemd.write_reload_verdict(verdict, "the verdict"))
print("ready", flush=True)
time.sleep(30)
"""


@pytest.mark.parametrize("verdict", ["ok", "refused"])
def test_lkbridge_reload_waits_for_the_daemons_verdict(tmp_path: Path, verdict: str) -> None:
    env = {**os.environ, "RUNTIME_DIRECTORY": str(tmp_path)}
    systemd.write_reload_verdict(True, "an older reload", environ=env)  # must not be taken
    child = subprocess.Popen([sys.executable, "-c", _CHILD, verdict], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        cli = subprocess.run(
            [sys.executable, "-m", "lkbridge", "reload", "--pid", str(child.pid), "--timeout", "10"],
            env=env, capture_output=True, text=True, check=False,
        )
        assert cli.returncode == (0 if verdict == "ok" else 1), cli.stderr
        assert "the verdict" in cli.stdout + cli.stderr
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_lkbridge_reload_fails_without_an_answer(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        os.kill(sleeper.pid, signal.SIGSTOP)  # a SIGHUP will not end it, and nobody answers
        started = time.monotonic()
        ok, message = systemd.request_reload(
            sleeper.pid, timeout=0.5, environ={"RUNTIME_DIRECTORY": str(tmp_path)}
        )
        assert not ok and "no answer" in message and time.monotonic() - started < 5
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("pid", [0, -1, -4242])
def test_lkbridge_reload_refuses_a_pid_that_names_a_group(
    tmp_path: Path, pid: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kill(0) / kill(-1) / kill(-pgid) signal a process group or everything we may reach; the
    # real os.kill is replaced so that a regression cannot hang up the test run's own processes
    signalled: list[tuple[int, int]] = []
    monkeypatch.setattr(systemd.os, "kill", lambda p, s: signalled.append((p, s)))
    ok, message = systemd.request_reload(
        pid, timeout=0.2, environ={"RUNTIME_DIRECTORY": str(tmp_path)}
    )
    assert not ok and message == f"not a process id: {pid}"
    assert signalled == []


def test_verdict_needs_a_runtime_directory() -> None:
    assert systemd.write_reload_verdict(True, "x", environ={}) is False
