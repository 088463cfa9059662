"""Per-session lanes: one session's jobs run in arrival order; waiting jobs can be abandoned."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from lkbridge.log import get_logger

log = get_logger(__name__)

LANE_LIMIT = 1000
"""Jobs waiting per session and lane; more are refused (and reported) rather than queued."""


@dataclass(frozen=True, slots=True)
class Job:
    """Work for one session: `run` carries it out; `abandon(reason)` answers it unrun."""

    run: Callable[[], Coroutine[Any, Any, None]]
    abandon: Callable[[str], None]


Spawn = Callable[[Coroutine[Any, Any, None], str], object]


class Lanes:
    """Runs each lane's jobs one after the other; different lanes do not wait for each other."""

    def __init__(self, name: str, spawn: Spawn, limit: int | None = None) -> None:
        self._name = name
        self._spawn = spawn
        self._limit = LANE_LIMIT if limit is None else limit
        self._queues: dict[str, deque[Job]] = {}

    def waiting(self) -> int:
        """Jobs queued in every lane (not counting the ones running)."""
        return sum(len(queue) for queue in self._queues.values())

    def enqueue(self, lane: str, job: Job) -> bool:
        """Run job after the earlier jobs of its lane; False (nothing queued) when it is full."""
        queue = self._queues.get(lane)
        if queue is None:
            queue = self._queues[lane] = deque()
            self._spawn(self._drain(lane, queue), f"mqtt-bridge-{self._name}-{lane}")
        elif len(queue) >= self._limit:
            return False
        queue.append(job)
        return True

    def barrier(self, lane: str) -> asyncio.Future[None] | None:
        """A future done once every job queued in lane so far has run (None: nothing queued)."""
        if lane not in self._queues:
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def release(_reason: str = "") -> None:
            if not done.done():
                done.set_result(None)

        async def run() -> None:
            release()

        self._queues[lane].append(Job(run, release))  # beyond the limit: it is tiny
        return done

    def abandon(self, lane: str, reason: str) -> int:
        """Answer every job still waiting in lane with reason, without running it."""
        queue = self._queues.get(lane)
        count = 0
        while queue:
            job = queue.popleft()
            count += 1
            try:
                job.abandon(reason)
            except Exception:
                log.exception("mqtt_job_abandon_failed", session=lane)
        return count

    async def _drain(self, lane: str, queue: deque[Job]) -> None:
        try:
            while queue:
                job = queue.popleft()
                try:
                    await job.run()
                except Exception:
                    log.exception("mqtt_command_failed", session=lane)
        finally:
            if self._queues.get(lane) is queue:
                del self._queues[lane]
