"""Group fsyncs of the store's write-ahead log, made in a worker thread off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lkbridge.log import get_logger

log = get_logger(__name__)


def fsync_file(path: Path) -> None:
    """fsync one file by name (nothing to do when it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalSyncer:
    """Makes committed WAL frames durable without blocking the event loop.

    `request()` returns a future that resolves once an fsync that *started after the call*
    finished: everything committed before the call is then on disk. Requests made while an
    fsync runs share the next one (a group commit), so a burst of durable writes costs two
    fsyncs, not one each. Without a running event loop the fsync happens inline.
    """

    def __init__(self, wal: Path) -> None:
        self.wal = wal
        self.syncs = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._running = False
        self._executor: ThreadPoolExecutor | None = None

    def request(self) -> asyncio.Future[None] | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            fsync_file(self.wal)
            self.syncs += 1
            return None
        future = loop.create_future()
        self._waiting.append(future)
        if not self._running:
            self._start(loop)
        return future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="lkbridge-fsync")
        done = loop.run_in_executor(self._executor, fsync_file, self.wal)
        done.add_done_callback(lambda task: self._finished(loop, batch, task))

    def _finished(
        self, loop: asyncio.AbstractEventLoop, batch: list[asyncio.Future[None]],
        task: asyncio.Future[None],
    ) -> None:  # fmt: skip
        self._running = False
        self.syncs += 1
        error = task.exception()
        if error is not None:
            log.error("history_not_synced", error=str(error))
        for future in batch:
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)
        if self._waiting:
            self._start(loop)

    def close(self) -> None:
        """Wait for a running fsync and stop the worker thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            with contextlib.suppress(Exception):
                executor.shutdown(wait=True)
