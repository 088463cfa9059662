"""Send-id windows are immune to wall-clock jumps (issue 11): SteadyClock and the store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lkbridge.daemon.clock import SteadyClock
from lkbridge.daemon.store import DATABASE_NAME, MessageStore

DAY = 24 * 3600.0


class WallClock:
    """time.time() the test can set, as NTP or an operator would."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.offset = 0.0
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + self.offset)


def test_the_steady_clock_does_not_follow_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = WallClock(monkeypatch)
    clock = SteadyClock()
    before = clock.now()
    wall.offset = 30 * DAY
    assert clock.now() - before < 60
    wall.offset = -30 * DAY
    assert 0 <= clock.now() - before < 60
    wall.offset = 0.0
    floor = time.time() + 5 * DAY  # the newest time already written is ahead of the wall clock
    assert SteadyClock(floor=floor).now() >= floor


def test_a_clock_set_forward_does_not_expire_send_ids_early(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device without a real-time clock starts at an old time; NTP then moves it months on.
    With the wall clock every id accepted before the sync looked expired at once, and a retry
    of such a send was carried out a second time."""
    wall = WallClock(monkeypatch)
    with MessageStore(tmp_path / DATABASE_NAME) as store:
        store.remember_send_id("s", "before-sync")
        wall.offset = 90 * DAY  # the first NTP sync
        assert store.seen_send_id("s", "before-sync")
        assert store.remember_send_id("s", "after-sync") is True  # prunes by age: keeps both
        assert store.seen_send_id("s", "before-sync")


def test_a_clock_set_back_does_not_make_new_ids_the_first_to_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-session limit drops the oldest ids first. With the wall clock, an id accepted
    after the clock was set back looked oldest and was dropped at once, even across a restart."""
    wall = WallClock(monkeypatch)
    path = tmp_path / DATABASE_NAME
    with MessageStore(path, send_id_limit=2) as store:
        store.remember_send_id("s", "one")
        store.remember_send_id("s", "two")
    wall.offset = -30 * DAY  # set back between runs
    with MessageStore(path, send_id_limit=2) as store:
        store.remember_send_id("s", "three")
        assert store.seen_send_id("s", "three")
        assert not store.seen_send_id("s", "one")  # the oldest went, as the limit says
        wall.offset = -60 * DAY  # and back again while running
        store.remember_send_id("s", "four")
        assert store.seen_send_id("s", "four") and store.seen_send_id("s", "three")


def test_send_ids_still_expire_after_the_ttl(tmp_path: Path) -> None:
    with MessageStore(tmp_path / DATABASE_NAME, send_id_ttl=0.05) as store:
        store.remember_send_id("s", "x")
        assert store.seen_send_id("s", "x")
        time.sleep(0.1)
        assert not store.seen_send_id("s", "x")
