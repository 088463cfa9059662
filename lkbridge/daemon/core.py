"""The daemon: hosts the configured sessions, implements the hub, starts bridges, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lkbridge import __version__
from lkbridge.backoff import Backoff
from lkbridge.bridges.hub import (
    Bridge,
    BridgeInfo,
    DaemonNotice,
    ErrorInfo,
    Health,
    HubError,
    HubEvent,
    HubEventKind,
    HubListener,
    Intent,
    MessageEvent,
    ReloadResult,
    SessionChange,
    SessionRemoved,
    SessionSnapshot,
    StateStatus,
    UnknownSession,
)
from lkbridge.config.files import (
    OVERRIDES_FILE,
)
from lkbridge.config.models import Config, SessionConfig
from lkbridge.config.runtime import Overrides
from lkbridge.daemon import systemd
from lkbridge.daemon.assembly import build_session
from lkbridge.daemon.bridges import BridgeFailed, enter_bridges, no_bridge_refusal, wait_ready
from lkbridge.daemon.changes import ConfigChanges
from lkbridge.daemon.intents import Intents
from lkbridge.daemon.journal import Journal
from lkbridge.daemon.runner import SessionRunner
from lkbridge.daemon.state import HistoryOpening, open_history
from lkbridge.daemon.store import StoreError
from lkbridge.log import get_logger, redact_text
from lkbridge.messages import ReceivedMessage, utcnow
from lkbridge.plugins.host import PluginHost, load_plugins

log = get_logger(__name__)



@runtime_checkable
class CountsUnsent(Protocol):
    """A bridge that can say how many messages it could not deliver (the MQTT bridge)."""

    @property
    def unsent(self) -> int: ...


class Daemon:
    """Hosts N sessions from config and is the Hub every bridge talks to."""

    def __init__(
        self,
        config_path: str | Path,
        *,
        plugins: PluginHost | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self.config_path = Path(config_path)
        self.overrides_problem: str | None = None  # why the overrides file is being ignored
        self._startup_notices: list[dict[str, Any]] = []  # reported once bridges observe
        self._bridges: list[Bridge] = []
        self._bridges_up = False
        self.base_session_ids: frozenset[str] = frozenset()  # the config file's own sessions
        self.overrides = Overrides()
        self.override_notes: list[str] = []  # what of the overrides file is not used, and why
        self.changes = ConfigChanges(self)  # loading, add_session, remove_session, reload
        self.config: Config = self.changes.load()
        self.plugins = plugins or load_plugins(self.config.plugins.disable)
        self.history_opening: HistoryOpening = open_history(
            self.config.state.directory, history_limit=self.config.state.history_limit
        )
        self.store = self.history_opening.store
        self.intents = Intents(self, Journal(self.store))
        self._startup_notices.extend(self.history_opening.notices)
        self.reload_error: str | None = None  # the last reload's failure, until one succeeds
        self.runners: dict[str, SessionRunner] = {}
        self.broken: dict[str, str] = {}  # session id -> why it could not be built
        self._broken_at: dict[str, str] = {}  # session id -> when (ISO 8601, UTC)
        self.services: dict[str, Any] = {}
        self._listeners: list[HubListener] = []
        self._backoff = (backoff_initial, backoff_max)
        self._stop = asyncio.Event()
        self._accepting = True
        self._started_at = time.monotonic()
        self._lock = asyncio.Lock()
        self._reload_task: asyncio.Task[None] | None = None
        self.bridge_ready_timeout = 5.0

    # -- config ----------------------------------------------------------------------------

    @property
    def overrides_path(self) -> Path:
        return self.config.state.directory / OVERRIDES_FILE

    def _state_notice(self, notice: dict[str, Any]) -> None:
        """Report on bridge/event now, or as soon as the bridges observe (at start)."""
        if self._bridges_up:
            self.report(**notice)
        else:
            self._startup_notices.append(notice)

    def state_status(self) -> StateStatus:
        """What is wrong with the state directory, for bridge/info and health_check."""
        return StateStatus(
            directory=str(self.config.state.directory),
            history=self.history_opening.status(),
            overrides_problem=self.overrides_problem,
        )

    # -- hub: observation ------------------------------------------------------------------

    def observe(self, listener: HubListener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: HubEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("hub_listener_failed", kind=event.kind.value)

    def report(self, event: str, **data: Any) -> None:
        self._emit(HubEvent(HubEventKind.BRIDGE, "", DaemonNotice(event, data)))

    def provide_service(self, name: str, service: Any) -> None:
        self.services[name] = service

    def session_ids(self) -> list[str]:
        return [sid for sid in self.config.sessions if sid in self.runners or sid in self.broken]

    def _runner(self, session_id: str) -> SessionRunner:
        if not isinstance(session_id, str):
            raise HubError("session: expected a string")
        runner = self.runners.get(session_id)
        if runner is None:
            if session_id in self.broken:
                raise HubError(f"session {session_id!r} is not running: {self.broken[session_id]}")
            raise UnknownSession(session_id)
        return runner

    def snapshot(self, session_id: str) -> SessionSnapshot:
        if session_id in self.broken:
            return SessionSnapshot(session_id, error=self._config_error(session_id))
        return self._runner(session_id).snapshot()

    def _config_error(self, session_id: str) -> ErrorInfo:
        at = self._broken_at.get(session_id) or utcnow().isoformat(timespec="milliseconds")
        return ErrorInfo("config", self.broken[session_id], at)

    def current_error(self, session_id: str) -> ErrorInfo | None:
        if session_id in self.broken:
            return self._config_error(session_id)
        return self._runner(session_id).error_data()

    def session_config(self, session_id: str) -> SessionConfig:
        cfg = self.config.sessions.get(session_id)
        if cfg is None:
            raise UnknownSession(session_id)
        return cfg

    def info(self) -> BridgeInfo:
        return BridgeInfo(
            version=__version__,
            sessions=tuple(self.session_ids()),
            plugins=tuple(self.plugins.describe()),
            plugin_conflicts=tuple(self.plugins.conflicts),
            config=self.config.redacted(),
            state=self.state_status(),
            last_reload_error=self.reload_error,
        )

    def health(self) -> Health:
        states = {sid: r.session.connection_state.value for sid, r in self.runners.items()}
        return Health(
            uptime=round(time.monotonic() - self._started_at, 1),
            sessions=states,
            broken_sessions=dict(self.broken),
            state=self.state_status(),
            last_reload_error=self.reload_error,
        )

    # -- hub: commands ---------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise HubError("lkbridge is shutting down")

    check_accepting = _check_accepting

    @property
    def accepting(self) -> bool:
        return self._accepting

    def runner(self, session_id: str) -> SessionRunner:
        """The session's runner; HubError (UnknownSession) when there is none."""
        return self._runner(session_id)

    def emit(self, event: HubEvent) -> None:
        self._emit(event)

    # -- hub: journaled intents (daemon/intents.py) ----------------------------------------

    def journal(self, intents: Sequence[Intent]) -> list[int | HubError]:
        return self.intents.add(intents)

    async def durable(self) -> None:
        try:
            await self.store.durable()
        except StoreError as exc:
            raise HubError(str(exc)) from exc

    def drop(self, seq: int) -> None:
        self.intents.finish(seq)

    def journaled(self, digest: bytes) -> bool:
        return self.intents.has(digest)

    async def carry_out(self, seq: int, intent: Intent) -> Awaitable[Any]:
        return await self.intents.carry_out(seq, intent)

    async def start_session(self, session_id: str) -> SessionSnapshot:
        self._check_accepting()
        if session_id in self.broken and session_id in self.config.sessions:
            # Try to build it again: what was missing (a secret, a plugin) may be there now.
            async with self._lock:
                await self._drop_runner(session_id, forget_history=False, replaced=True)
                self._add_runner(self.config.sessions[session_id])
            if session_id in self.runners:
                self._emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, SessionChange(session_id)))
        runner = self._runner(session_id)
        runner.start()
        return runner.snapshot()

    async def end_session(self, session_id: str) -> SessionSnapshot:
        self._check_accepting()
        runner = self._runner(session_id)
        await runner.end()
        return runner.snapshot()

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        send_id: str | None = None,
        conversation_id: str | None = None,
    ) -> dict[str, Any]:
        self._check_accepting()
        return await self._runner(session_id).send(text, send_id, conversation_id=conversation_id)

    def history(self, session_id: str) -> list[MessageEvent]:
        runner = self._runner(session_id)
        return [runner.message_event(m) for m in runner.session.get_message_history()]

    def restore(self, session_id: str, messages: list[dict[str, Any]]) -> int:
        self._check_accepting()
        runner = self._runner(session_id)
        if not isinstance(messages, list):
            raise HubError("messages: expected a list")
        parsed: list[ReceivedMessage] = []
        for index, item in enumerate(messages):
            try:
                parsed.append(ReceivedMessage.from_dict(item))
            except ValueError as exc:
                raise HubError(f"messages[{index}].{exc}") from exc
        runner.session.restore_message_history(parsed)
        return len(runner.session.get_message_history())

    def dismiss_error(self, session_id: str) -> None:
        self._check_accepting()
        self._runner(session_id).session.dismiss_error()

    async def add_session(
        self,
        session_id: str,
        template: str,
        *,
        agent_name: str | None = None,
        agent_metadata: str | None = None,
    ) -> SessionSnapshot:
        """Add a session made from a [templates.NAME] of the config file (daemon/changes.py)."""
        return await self.changes.add_session(
            session_id, template, agent_name=agent_name, agent_metadata=agent_metadata
        )

    async def remove_session(self, session_id: str) -> SessionRemoved:
        return await self.changes.remove_session(session_id)

    async def reload(self) -> ReloadResult:
        """Re-read the config file and the overrides; apply session changes only."""
        return await self.changes.reload()

    # -- sessions --------------------------------------------------------------------------

    def _add_runner(self, cfg: SessionConfig) -> None:
        try:
            session = build_session(
                cfg, self.plugins, self.services, history_limit=self.config.state.history_limit
            )
        except Exception as exc:
            # Scrubbed once here, so snapshots, errors and health_check never carry a secret.
            reason = redact_text(str(exc) or type(exc).__name__)
            self.broken[cfg.id] = reason
            self._broken_at[cfg.id] = utcnow().isoformat(timespec="milliseconds")
            log.error("session_not_built", session=cfg.id, reason=reason)
            self._emit(HubEvent(HubEventKind.STATE, cfg.id, self.snapshot(cfg.id)))
            self._emit(HubEvent(HubEventKind.ERROR, cfg.id, self.current_error(cfg.id)))
            return
        self.broken.pop(cfg.id, None)
        runner = SessionRunner(
            cfg, session, self.store, self._emit, backoff=Backoff(*self._backoff),
            journal=self.intents.journal,
        )  # fmt: skip
        self.runners[cfg.id] = runner
        restored = runner.restore_from_store()
        log.info("session_added", session=cfg.id, restored_messages=restored)

    def _launch(self, session_id: str) -> None:
        runner = self.runners.get(session_id)
        if runner is None:
            return
        self._emit(HubEvent(HubEventKind.STATE, session_id, runner.snapshot()))
        # Also clears an error retained from a session of the same id before it.
        self._emit(HubEvent(HubEventKind.ERROR, session_id, runner.error_data()))
        if runner.cfg.autostart:
            runner.start()

    async def _drop_runner(
        self, session_id: str, *, forget_history: bool, replaced: bool = False
    ) -> None:
        """Close a session; `replaced` says a new one with the same id follows at once."""
        runner = self.runners.pop(session_id, None)
        self.broken.pop(session_id, None)
        if runner is not None:
            await runner.aclose()
        if forget_history:
            self.store.delete_session(session_id)
        change = SessionChange(session_id, replaced)
        self._emit(HubEvent(HubEventKind.SESSION_REMOVED, session_id, change))
        log.info("session_removed", session=session_id, replaced=replaced)

    # -- running ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _request_reload(self) -> None:
        async def reload() -> None:
            systemd.reloading()
            ok, message = False, "reload did not finish"
            try:
                result = await self.reload()
                ok, message = True, "reloaded: " + ", ".join(
                    f"{k} {len(v)}" for k, v in result.to_json().items() if v
                )
            except HubError as exc:
                message = str(exc)
            finally:
                # READY=1 either way (the daemon runs on), but STATUS says when it kept the old
                # config, and `lkbridge reload` (ExecReload) gets the verdict and fails with it.
                line = self._status_line(self._bridges)
                systemd.notify("READY=1", f"STATUS={line}")
                systemd.write_reload_verdict(ok, message)

        task = asyncio.get_running_loop().create_task(reload(), name="config-reload")
        self._reload_task = task

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        if (refusal := no_bridge_refusal(self.plugins, self.config)) is not None:
            log.error("no_bridge", reason=refusal)
            systemd.status(f"not started: {refusal}")
            return 1
        async with AsyncExitStack() as stack:
            stack.callback(self.store.close)
            unfinished = self.intents.pending()  # before a bridge journals anything new
            try:
                bridges = await enter_bridges(stack, self, self.plugins, self.config)
            except BridgeFailed as exc:
                # Without its bridge the daemon would run doing nothing and look healthy:
                # fail before READY so that systemd (Restart=on-failure) and the operator see it.
                systemd.status(str(exc))
                return 1
            # Reported once bridges observe, so the failures reach MQTT too.
            self.changes.report_override_notes()
            for failure in self.plugins.failures():
                self.report("plugin_failed", plugin=failure.name, distribution=failure.distribution,
                            version=failure.version, error=failure.error)
            # Sessions are built and launched before anything a bridge receives is carried
            # out (a command queued by the broker arrives right after the bridge connects).
            for cfg in self.config.sessions.values():
                self._add_runner(cfg)
            for sid in list(self.runners):
                self._launch(sid)
            # What a previous run acknowledged but did not finish, before anything new.
            self.intents.replay(unfinished)
            # READY once the bridges are up too (bounded: a broker outage is a status, not a
            # reason to hold back start-up).
            await wait_ready(bridges, self.bridge_ready_timeout)
            count = len(self.runners)
            self._bridges = bridges
            # Whatever was wrong with the state directory, now that bridges can tell it.
            self._bridges_up = True
            for notice in self._startup_notices:
                self.report(**notice)
            self._startup_notices.clear()
            systemd.ready(self._status_line(bridges))
            log.info("daemon_ready", sessions=count, broken=len(self.broken), version=__version__)
            watchdog = systemd.Watchdog()
            await stack.enter_async_context(watchdog)
            status = asyncio.get_running_loop().create_task(
                self._report_status(bridges), name="systemd-status"
            )
            stack.callback(status.cancel)
            await self._stop.wait()
            # Shutdown order: stop accepting commands, end sessions, then bridges go offline.
            systemd.stopping("stopping")
            log.info("daemon_stopping")
            self._accepting = False
            if self._reload_task is not None and not self._reload_task.done():
                self._reload_task.cancel()
            await asyncio.gather(
                *(self._close_runner(r) for r in list(self.runners.values())),
                return_exceptions=True,
            )
        # The last line says what the bridges could not deliver (e.g. to an unreachable broker).
        unsent = [b.unsent for b in bridges if isinstance(b, CountsUnsent)]
        log.info("daemon_stopped", **({"unsent": sum(unsent)} if unsent else {}))
        return 0

    def _status_line(self, bridges: list[Bridge]) -> str:
        connected = sum(1 for r in self.runners.values() if r.connected)
        parts = [f"{connected}/{len(self.runners)} session(s) connected"]
        if self.broken:
            parts.append(f"{len(self.broken)} broken")
        parts.extend(line for b in bridges if (line := b.status()))  # "" says nothing
        if not self.store.persisted:
            parts.append("history not persisted")
        if self.overrides_problem is not None:
            parts.append("overrides file ignored")
        if self.reload_error is not None:
            parts.append(f"reload failed, previous config kept: {self.reload_error[:200]}")
        return "; ".join(parts)

    async def _report_status(self, bridges: list[Bridge], interval: float = 5.0) -> None:
        """Keep systemd's STATUS= current (sessions connected, broker reachable or not)."""
        last = ""
        while True:
            line = self._status_line(bridges)
            if line != last:
                systemd.status(line)
                last = line
            await asyncio.sleep(interval)

    async def _close_runner(self, runner: SessionRunner) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.aclose(), 5.0)
        self._emit(HubEvent(HubEventKind.STATE, runner.id, runner.snapshot()))
