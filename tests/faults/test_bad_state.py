"""Bad state cannot stop the daemon: a damaged history database, a broken overrides file, a
read-only or a full state directory. Each runs the daemon as a subprocess and talks MQTT to it."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from lkbridge.daemon.store import DATABASE_NAME, MessageStore
from lkbridge.messages import MessageType, ReceivedMessage
from tests.faults.helpers import bridge_events, request, state_is, wait_until
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _message(n: int) -> ReceivedMessage:
    return ReceivedMessage(
        id=f"m{n}", timestamp=datetime(2026, 1, 1, tzinfo=UTC), type=MessageType.AGENT_TRANSCRIPT,
        text=f"kept message {n} " + "x" * 200, final=True,
    )


def _history_db(state: Path, messages: int) -> Path:
    state.mkdir(parents=True, exist_ok=True)
    path = state / DATABASE_NAME
    with MessageStore(path) as store:
        store.upsert_many("talk", [_message(n) for n in range(messages)])
    return path


def damage_random(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def damage_pages(path: Path) -> None:
    """Garbage over the middle pages; the header (page 1) stays, so SQLite opens it."""
    data = bytearray(path.read_bytes())
    assert len(data) > 6 * 4096, len(data)
    data[2 * 4096 : len(data) - 4096] = os.urandom(len(data) - 3 * 4096)
    path.write_bytes(bytes(data))


def damage_truncate(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2 + 100)


async def _online(probe: MqttProbe, base: str, mark: int) -> None:
    await probe.wait_for(
        f"{base}/bridge/state", lambda m: m.payload == b'{"state":"online"}', after=mark, timeout=30
    )


def _info(probe: MqttProbe, base: str) -> dict[str, Any]:
    seen = probe.seen(f"{base}/bridge/info")
    assert seen, "no bridge/info"
    return dict(seen[-1].json())


@pytest.mark.parametrize("damage", [damage_random, damage_pages, damage_truncate],
                         ids=["random-bytes", "corrupted-pages", "truncated"])
async def test_a_damaged_history_database_is_moved_aside(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemons: Callable[..., DaemonProcess], damage: Callable[[Path], None],
) -> None:
    base = f"bad-db-{uuid.uuid4().hex[:6]}"
    database = _history_db(tmp_path / "state", 40)
    original_size = database.stat().st_size
    damage(database)
    damaged = database.read_bytes()
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("talk", livekit_server, None, autostart=False),
        base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config)
        await _online(probe, base, 0)
        await wait_until(lambda: bool(bridge_events(probe, base, "history_database_moved_aside")),
                         10, "the history_database_moved_aside event")
        event = bridge_events(probe, base, "history_database_moved_aside")[0]
        aside = Path(event["moved_to"])
        assert aside.name.startswith(f"{DATABASE_NAME}.corrupt-"), event
        kept = await asyncio.to_thread(aside.read_bytes)
        assert kept == damaged, "the damaged file is kept as it was, for inspection"
        info = await _wait_info(probe, base, lambda i: bool(i["state"]["history"]["moved_aside"]))
        assert info["state"]["history"]["persisted"] is True, info["state"]
        assert info["state"]["history"]["moved_aside"] == str(aside)
        assert "history_database_moved_aside" in daemon.log_text()
        # It serves, and the new database takes what comes.
        reply = await request(probe, base, "session/history", {"session": "talk"})
        assert reply["status"] == "ok" and reply["data"]["messages"] == [], reply
        restore = [{"id": "r1", "timestamp": "2026-01-01T00:00:00+00:00", "type": "user_input",
                    "text": "after the damage", "final": True}]
        reply = await request(probe, base, "session/restore", {"session": "talk", "messages": restore})
        assert reply["status"] == "ok", reply
        assert daemon.stop() == 0
        with MessageStore(database) as store:
            assert [m.text for m in store.load("talk")] == ["after the damage"]
        print(f"{damage.__name__}: {original_size} B database moved to {aside.name}")
    finally:
        probe.close()


async def _wait_info(
    probe: MqttProbe, base: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    def ok() -> bool:
        seen = probe.seen(f"{base}/bridge/info")
        return bool(seen) and predicate(seen[-1].json())

    await wait_until(ok, timeout, "bridge/info to show it")
    return _info(probe, base)


BROKEN_OVERRIDES = {
    "truncated": '# Written by lkbridge\nremoved = []\n[sessions.extra]\nagent_name = "a',
    "invalid-toml": "removed = [\n[sessions.extra\n",
    "unknown-key": 'removed = []\nsurprise = 1\n[sessions]\n',
}


@pytest.mark.parametrize("kind", list(BROKEN_OVERRIDES))
async def test_a_broken_overrides_file_is_reported_and_ignored(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemons: Callable[..., DaemonProcess], kind: str,
) -> None:
    base = f"bad-ovr-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    state.mkdir()
    overrides = state / "overrides.toml"
    overrides.write_text(BROKEN_OVERRIDES[kind])
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("talk", livekit_server, None, autostart=False),
        base_topic=base,
    )
    # `lkbridge check` reads the overrides file too, and says what the daemon will do with it.
    check = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "lkbridge", "check", "-c", str(config)],
        capture_output=True, text=True, check=False,
        env={**os.environ, "LKB_TEST_API_SECRET": livekit_server.api_secret},
    )
    assert check.returncode == 2, check.stdout + check.stderr
    assert "overrides.toml" in check.stderr and "ignores this file" in check.stderr, check.stderr
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config)
        await _online(probe, base, 0)
        await wait_until(lambda: bool(bridge_events(probe, base, "overrides_ignored")), 10,
                         "the overrides_ignored event")
        info = await _wait_info(probe, base, lambda i: bool(i["state"]["overrides_problem"]))
        assert info["sessions"] == ["talk"], info["sessions"]
        assert "overrides_ignored" in daemon.log_text()
        health = await request(probe, base, "health_check")
        assert health["data"]["state"]["overrides_problem"], health
        assert overrides.read_text() == BROKEN_OVERRIDES[kind], "left as it was, for the operator"
        assert daemon.stop() == 0
    finally:
        probe.close()


def _mount_namespace(script: str) -> list[str]:
    """A prefix that runs the daemon in a private mount namespace after `script` (as root), so
    the test's mounts never reach the host. Skips (fails in CI) where that is not possible."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--mount", "--propagation", "private", "true"],
                           capture_output=True, check=False) if unshare else None
    if probe is None or probe.returncode != 0 or os.geteuid() != 0:
        reason = "needs root and unshare --mount (util-linux) for a private mount"
        if IN_CI:
            pytest.fail(f"CI=true: {reason}")
        pytest.skip(reason)
    return [unshare or "unshare", "--mount", "--propagation", "private", "sh", "-ec",
            script + '\nexec "$@"', "sh"]


async def test_a_read_only_state_directory_keeps_the_daemon_serving(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    daemons: Callable[..., DaemonProcess],
) -> None:
    base = f"ro-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    _history_db(state, 3)
    # Root ignores file modes: a read-only bind mount is what makes the directory read-only.
    prefix = _mount_namespace(f"mount --bind {state} {state}\nmount -o remount,bind,ro {state}")
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("talk", livekit_server, None, autostart=False),
        base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config, prefix=prefix)
        await _online(probe, base, 0)
        await wait_until(lambda: bool(bridge_events(probe, base, "history_not_persisted")), 10,
                         "the history_not_persisted event")
        info = await _wait_info(probe, base, lambda i: i["state"]["history"]["persisted"] is False)
        assert "read" in (info["state"]["history"]["problem"] or ""), info["state"]
        health = await request(probe, base, "health_check")
        assert health["data"]["state"]["history"]["persisted"] is False, health
        # What the read-only database holds is still served (from an in-memory copy).
        reply = await request(probe, base, "session/history", {"session": "talk"})
        assert [m["id"] for m in reply["data"]["messages"]] == ["m0", "m1", "m2"], reply
        assert "history_not_persisted" in daemon.log_text()
        assert daemon.stop() == 0
    finally:
        probe.close()


async def test_a_full_disk_keeps_sends_idempotent(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemons: Callable[..., DaemonProcess],
) -> None:
    """The state directory is a 2 MB tmpfs (in the daemon's own mount namespace), filled up once
    the daemon runs: a send repeated with the same id is carried out once, the second answered
    as a duplicate, and health_check says history is not persisted."""
    agent = await scripted_agent()
    base = f"full-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "state"
    state.mkdir()
    prefix = _mount_namespace(f"mount -t tmpfs -o size=2m,mode=0700 lkb-full {state}")
    config = daemon_config(
        tmp_path, mqtt_broker.port, session_toml("talk", livekit_server, agent.agent_name),
        base_topic=base,
    )
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        daemon = daemons(config, prefix=prefix)
        await _online(probe, base, 0)
        await probe.wait_for(f"{base}/talk/state", state_is("connected", "listening"), timeout=30)
        job = await agent.wait_for_job(timeout=10)
        assert daemon.proc is not None
        # The daemon's view of the directory: its mount namespace, through /proc.
        inside = Path(f"/proc/{daemon.proc.pid}/root") / str(state).lstrip("/")
        assert (inside / DATABASE_NAME).exists()
        with (inside / "filler").open("wb") as filler:
            with pytest.raises(OSError) as full:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        assert full.value.errno == 28, full.value  # ENOSPC
        answers = []
        for _ in range(2):
            reply = await request(probe, base, "session/send",
                                  {"session": "talk", "text": "only once, please", "id": "full-1"})
            assert reply["status"] == "ok", reply
            answers.append(reply["data"])
        assert [a["duplicate"] for a in answers] == [False, True], answers
        assert answers[1]["id"] == answers[0]["id"], answers
        first = await asyncio.wait_for(job.chat.get(), 10)
        assert first.text == "only once, please"
        await asyncio.sleep(1.5)  # a second delivery would be here by now
        assert job.chat.empty(), f"delivered twice: {job.chat.get_nowait()}"
        await wait_until(lambda: bool(bridge_events(probe, base, "history_not_saved")), 10,
                         "the history_not_saved event (the disk is really full)")
        health = await request(probe, base, "health_check")
        assert health["data"]["state"]["history"]["persisted"] is False, health
        assert daemon.stop() == 0
    finally:
        probe.close()
