"""The state directory at start: opens the history store, surviving a damaged or unusable disk."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lkbridge.daemon.store import DATABASE_NAME, MessageStore, StoreError
from lkbridge.log import get_logger

__all__ = ["HistoryOpening", "move_aside", "open_history"]

log = get_logger(__name__)


@dataclass
class HistoryOpening:
    """The opened store and what had to be done to open it (reported once bridges observe)."""

    store: MessageStore
    database: Path
    moved_aside: Path | None = None
    problem: str | None = None  # why history is not persisted, when it is not
    notices: list[dict[str, Any]] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """For bridge/info and health_check: is history reaching the disk, and if not, why."""
        store = self.store
        return {
            "persisted": store.persisted,
            "database": str(self.database),
            "problem": self.problem if store.in_memory else store.write_error,
            "moved_aside": str(self.moved_aside) if self.moved_aside else None,
        }


def move_aside(path: Path, label: str, *, now: datetime | None = None) -> Path:
    """Rename path (and SQLite's -wal/-shm next to it) to `<name>.<label>-<UTC time>`; kept for
    inspection. Raises OSError when the directory cannot be changed."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            with contextlib.suppress(OSError):
                os.replace(companion, target.with_name(target.name + suffix))
    return target


def open_history(directory: Path, *, history_limit: int) -> HistoryOpening:
    """Open `directory/lkbridge.sqlite3`, never failing.

    - sound: used as is;
    - damaged or not a database: moved aside (`lkbridge.sqlite3.corrupt-<time>`), a new one made;
    - the directory cannot be written (read-only, full, no rights): history lives in memory
      (starting from what the old file holds, if it can be read) and is marked not persisted.
    """
    database = directory / DATABASE_NAME
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        return HistoryOpening(
            MessageStore(database, history_limit=history_limit, verify=True), database
        )
    except OSError as exc:
        first: StoreError = StoreError(
            f"cannot create state directory {directory}: {exc.strerror or exc}"
        )
    except StoreError as exc:
        first = exc
    opening: HistoryOpening | None = None
    if first.corrupt or (database.exists() and not os.access(database, os.R_OK)):
        try:
            aside = move_aside(database, "corrupt")
        except OSError as exc:
            log.error("history_database_not_moved", database=str(database), error=str(exc))
        else:
            log.error("history_database_moved_aside", database=str(database),
                      moved_to=str(aside), reason=str(first))
            notice = {"event": "history_database_moved_aside", "database": str(database),
                      "moved_to": str(aside), "reason": str(first)}
            try:
                store = MessageStore(database, history_limit=history_limit)
            except StoreError as exc:
                first = exc
            else:
                return HistoryOpening(store, database, moved_aside=aside, notices=[notice])
            opening = HistoryOpening(
                MessageStore.in_memory_copy(None, history_limit=history_limit), database,
                moved_aside=aside, notices=[notice],
            )
    if opening is None:
        readable = None if first.corrupt else database
        opening = HistoryOpening(
            MessageStore.in_memory_copy(readable, history_limit=history_limit), database
        )
    opening.problem = str(first)
    log.error("history_not_persisted", database=str(database), reason=str(first))
    opening.notices.append(
        {"event": "history_not_persisted", "database": str(database), "reason": str(first)}
    )
    return opening
