"""sd_notify and the watchdog against a real AF_UNIX datagram socket."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lkbridge.daemon import systemd


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's: records every datagram with its arrival time."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address if not address.startswith("@") else "\0" + address[1:])
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self, timeout: float = 2.0, count: int = 1) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [payload for _, payload in self.received]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="lkb-sd-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    opened = NotifyListener(str(short_dir / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", opened.address)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield opened
    opened.close()


def test_notify_is_a_no_op_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    assert systemd.ready() is False
    assert systemd.notify("READY=1", environ={}) is False


def test_notify_sends_one_datagram(listener: NotifyListener) -> None:
    assert systemd.notify("READY=1", "STATUS=all good") is True
    assert listener.messages() == ["READY=1\nSTATUS=all good"]


def test_notify_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"@lkbridge-test-{os.getpid()}-{time.monotonic_ns()}"
    abstract = NotifyListener(name)
    try:
        assert systemd.notify("WATCHDOG=1", environ={"NOTIFY_SOCKET": name}) is True
        assert abstract.messages() == ["WATCHDOG=1"]
    finally:
        abstract.close()


def test_notify_failures_are_not_errors(short_dir: Path) -> None:
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": str(short_dir / "absent")}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert systemd.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False


def test_lifecycle_messages(listener: NotifyListener) -> None:
    assert systemd.ready("2 sessions\nrunning")
    assert systemd.status("broker unreachable, retrying")
    assert systemd.watchdog_ping()
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert systemd.stopping("ending sessions")
    assert systemd.stopping()
    messages = listener.messages(count=6)
    assert messages[:3] == [
        "READY=1\nSTATUS=2 sessions running",
        "STATUS=broker unreachable, retrying",
        "WATCHDOG=1",
    ]
    reload_lines = messages[3].split("\n")
    assert reload_lines[0] == "RELOADING=1"
    assert before <= int(reload_lines[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert messages[4:] == ["STOPPING=1\nSTATUS=ending sessions", "STOPPING=1"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert systemd.watchdog_interval(environ) == expected


def test_watchdog_interval_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 0.25


async def test_watchdog_is_disabled_without_an_interval(listener: NotifyListener) -> None:
    async with systemd.Watchdog(environ={"NOTIFY_SOCKET": listener.address}) as watchdog:
        assert not watchdog.enabled
        await asyncio.sleep(0.05)
    assert listener.received == []


async def test_watchdog_pings_while_the_loop_runs_and_stops_after(
    listener: NotifyListener,
) -> None:
    environ = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "40000"}  # ping every 20 ms
    async with systemd.Watchdog(environ=environ) as watchdog:
        assert watchdog.enabled and watchdog.interval == 0.02
        await asyncio.sleep(0.25)
    stopped_at = time.monotonic()
    await asyncio.sleep(0.1)
    assert watchdog.pings >= 5
    pings = [(at, payload) for at, payload in listener.received]
    assert all(payload == "WATCHDOG=1" for _, payload in pings)
    assert len(pings) == watchdog.pings
    assert not [at for at, _ in pings if at > stopped_at + 0.02]


async def test_watchdog_pings_stop_while_the_loop_is_blocked(listener: NotifyListener) -> None:
    interval = 0.05
    async with systemd.Watchdog(interval, environ={"NOTIFY_SOCKET": listener.address}) as dog:
        await asyncio.sleep(0.3)
        blocked_from = time.monotonic()
        time.sleep(0.6)  # noqa: ASYNC251  -- the point: a wedged event loop
        blocked_until = time.monotonic()
        await asyncio.sleep(0.3)
    times = [at for at, _ in listener.received]
    before = [t for t in times if t < blocked_from]
    during = [t for t in times if blocked_from + 0.05 < t < blocked_until]
    after = [t for t in times if t >= blocked_until]
    assert len(before) >= 3
    assert during == []  # nothing while the loop could not run the pinging task
    assert len(after) >= 3  # back as soon as the loop is healthy again
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert max(gaps) >= 0.5
    assert dog.max_lag >= 0.5


async def test_watchdog_task_is_named_and_cancelled_on_exit(listener: NotifyListener) -> None:
    async with systemd.Watchdog(1.0, environ={"NOTIFY_SOCKET": listener.address}):
        names = {task.get_name() for task in asyncio.all_tasks()}
        assert "systemd-watchdog" in names
    await asyncio.sleep(0)
    assert "systemd-watchdog" not in {task.get_name() for task in asyncio.all_tasks()}
