"""The Wyoming bridge: a Wyoming server per opted-in session, kept in step with the config."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from lkbridge.bridges.hub import DaemonNotice, Hub, HubError, HubEvent, HubEventKind
from lkbridge.bridges.wyoming.answers import AnswerDesk
from lkbridge.config.models import Config, SessionConfig, WyomingConfig

if TYPE_CHECKING:
    # The `wyoming` package is imported only once a session has a [wyoming] table.
    from lkbridge.bridges.wyoming.server import WyomingServer

log = structlog.get_logger(__name__)


class WyomingBridgeError(Exception):
    """A session's Wyoming server could not be started (e.g. its port is taken)."""


def display_name(session_id: str, settings: WyomingConfig) -> str:
    return settings.name or f"lkbridge {session_id}"


class WyomingBridge:
    """`async with WyomingBridge(hub, config):` serves every session with a `[wyoming]` table.

    At start a server that cannot listen fails the bridge (so the daemon fails before READY);
    after a reload or a runtime change the failure is reported as a bridge event instead.
    """

    def __init__(self, hub: Hub, config: Config) -> None:
        self._hub = hub
        self._initial = {
            sid: cfg.wyoming for sid, cfg in config.sessions.items() if cfg.wyoming is not None
        }
        self._servers: dict[str, WyomingServer] = {}
        self._advertisers: dict[str, Any] = {}
        self._unobserve: Any = None
        self._resync = asyncio.Event()
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def servers(self) -> dict[str, WyomingServer]:
        return self._servers

    async def __aenter__(self) -> WyomingBridge:
        try:
            for session_id, settings in self._initial.items():
                await self._open(session_id, settings)
        except BaseException:
            await self._close_all()
            raise
        self._unobserve = self._hub.observe(self._on_event)
        self._sync_task = asyncio.get_running_loop().create_task(
            self._sync_loop(), name="wyoming-bridge-sync"
        )
        log.info("wyoming_bridge_started", sessions=sorted(self._servers))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._unobserve is not None:
            self._unobserve()
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        await self._close_all()

    async def wait_ready(self, timeout: float) -> bool:
        """Servers listen once entered: nothing to wait for."""
        return True

    def status(self) -> str:
        """One short line for systemd's STATUS= ("" when no session uses Wyoming)."""
        return f"Wyoming: {len(self._servers)} session(s)" if self._servers else ""

    async def _open(self, session_id: str, settings: WyomingConfig) -> None:
        from lkbridge.bridges.wyoming.protocol import ProgramInfo
        from lkbridge.bridges.wyoming.server import WyomingServer

        desk = AnswerDesk(self._hub, session_id, timeout=settings.answer_timeout,
                          max_waiting=settings.max_waiting)  # fmt: skip
        program = ProgramInfo(display_name(session_id, settings), session_id, settings.languages)
        server = WyomingServer(settings, desk, program)
        try:
            await server.start()
        except OSError as exc:
            raise WyomingBridgeError(
                f"sessions.{session_id}.wyoming: cannot listen on"
                f" {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        self._servers[session_id] = server
        if settings.zeroconf:
            from lkbridge.bridges.wyoming.advertise import advertise

            self._advertisers[session_id] = await advertise(
                self._hub, session_id, program.name, server.address
            )

    async def _close(self, session_id: str) -> None:
        advertiser = self._advertisers.pop(session_id, None)
        if advertiser is not None:
            await advertiser.aclose()
        server = self._servers.pop(session_id, None)
        if server is not None:
            await server.aclose()

    async def _close_all(self) -> None:
        for session_id in list(self._servers):
            await self._close(session_id)

    # -- hub events (synchronous, on the loop) ------------------------------------------------

    def _on_event(self, event: HubEvent) -> None:
        server = self._servers.get(event.session_id)
        if server is not None:
            server.desk.feed(event)
        if event.kind in (HubEventKind.SESSION_ADDED, HubEventKind.SESSION_REMOVED) or (
            isinstance(event.data, DaemonNotice) and event.data.event == "config_reloaded"
        ):
            self._resync.set()

    async def _sync_loop(self) -> None:
        while True:
            await self._resync.wait()
            self._resync.clear()
            await asyncio.sleep(0)  # let a burst of events coalesce
            try:
                await self._sync()
            except Exception:
                log.exception("wyoming_sync_failed")

    def _wanted(self) -> dict[str, WyomingConfig]:
        wanted: dict[str, WyomingConfig] = {}
        for session_id in self._hub.session_ids():
            try:
                cfg = self._hub.session_config(session_id)
            except HubError:
                continue
            if isinstance(cfg, SessionConfig) and cfg.wyoming is not None:
                wanted[session_id] = cfg.wyoming
        return wanted

    async def _sync(self) -> None:
        """Open, close or reopen servers so they match the sessions' current config."""
        wanted = self._wanted()
        for session_id in list(self._servers):
            current = self._servers[session_id].settings
            if wanted.get(session_id) != current:
                await self._close(session_id)
        for session_id, settings in wanted.items():
            if session_id in self._servers:
                continue
            try:
                await self._open(session_id, settings)
            except WyomingBridgeError as exc:
                log.error("wyoming_server_failed", session=session_id, error=str(exc))
                self._hub.report("wyoming_failed", session=session_id, error=str(exc))
