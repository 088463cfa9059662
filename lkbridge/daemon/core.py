"""The daemon: hosts the configured sessions, implements the hub, starts bridges, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import structlog

from lkbridge import __version__
from lkbridge.bridges.hub import (
    HubError,
    HubEvent,
    HubEventKind,
    HubListener,
    Intent,
    UnknownSession,
)
from lkbridge.config.files import (
    OVERRIDES_FILE,
    load_config,
    load_overrides,
    session_from_table,
    unknown_name_problems,
    write_overrides,
)
from lkbridge.config.models import Config, ConfigError, Overrides, SessionConfig, diff_configs
from lkbridge.daemon import systemd
from lkbridge.daemon.assembly import build_session
from lkbridge.daemon.intents import Intents
from lkbridge.daemon.journal import Journal
from lkbridge.daemon.runner import Backoff, SessionRunner
from lkbridge.daemon.store import MessageStore, StoreError
from lkbridge.messages import ReceivedMessage
from lkbridge.plugins.host import PluginHost, load_plugins

log = structlog.get_logger(__name__)


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
        self.config: Config = self._load_config()
        self.plugins = plugins or load_plugins(self.config.plugins.disable)
        self.store = MessageStore.in_directory(
            self.config.state.directory, history_limit=self.config.state.history_limit
        )
        self.intents = Intents(self, Journal(self.store))
        self.runners: dict[str, SessionRunner] = {}
        self.broken: dict[str, str] = {}  # session id -> why it could not be built
        self.services: dict[str, Any] = {}
        self._listeners: list[HubListener] = []
        self._backoff = (backoff_initial, backoff_max)
        self._stop = asyncio.Event()
        self._accepting = True
        self._started_at = time.monotonic()
        self._lock = asyncio.Lock()
        self.bridge_ready_timeout = 5.0

    # -- config ----------------------------------------------------------------------------

    @property
    def overrides_path(self) -> Path:
        return self.config.state.directory / OVERRIDES_FILE

    def _load_config(self) -> Config:
        base = load_config(self.config_path)
        self.base_session_ids = frozenset(base.sessions)
        self.overrides: Overrides = load_overrides(base.state.directory / OVERRIDES_FILE)
        return self.overrides.apply(base)

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
        self._emit(HubEvent(HubEventKind.BRIDGE, "", {"event": event, **data}))

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

    def snapshot(self, session_id: str) -> dict[str, Any]:
        if session_id in self.broken:
            return {
                "session": session_id,
                "connection_state": "disconnected",
                "is_connected": False,
                "agent": None,
                "error": {"kind": "config", "message": self.broken[session_id], "at": None},
                "room": None,
                "wanted": False,
            }
        return self._runner(session_id).snapshot()

    def current_error(self, session_id: str) -> dict[str, Any] | None:
        if session_id in self.broken:
            return {"kind": "config", "message": self.broken[session_id], "at": None}
        error = self._runner(session_id).session.error
        return error.to_dict() if error is not None else None

    def info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "sessions": self.session_ids(),
            "plugins": self.plugins.describe(),
            "plugin_conflicts": list(self.plugins.conflicts),
            "config": self.config.redacted(),
        }

    def health(self) -> dict[str, Any]:
        states = {sid: r.session.connection_state.value for sid, r in self.runners.items()}
        return {
            "status": "ok",
            "uptime": round(time.monotonic() - self._started_at, 1),
            "sessions": states,
            "broken_sessions": dict(self.broken),
        }

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

    def journaled(self, digest: bytes) -> bool:
        return self.intents.has(digest)

    async def carry_out(self, seq: int, intent: Intent) -> Awaitable[dict[str, Any]]:
        return await self.intents.carry_out(seq, intent)

    async def start_session(self, session_id: str) -> dict[str, Any]:
        self._check_accepting()
        if session_id in self.broken and session_id in self.config.sessions:
            # Try to build it again: what was missing (a secret, a plugin) may be there now.
            async with self._lock:
                await self._drop_runner(session_id, forget_history=False, replaced=True)
                self._add_runner(self.config.sessions[session_id])
            if session_id in self.runners:
                self._emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, {"session": session_id}))
        runner = self._runner(session_id)
        runner.start()
        return runner.snapshot()

    async def end_session(self, session_id: str) -> dict[str, Any]:
        self._check_accepting()
        runner = self._runner(session_id)
        await runner.end()
        return runner.snapshot()

    async def send(self, session_id: str, text: str, *, send_id: str | None = None) -> dict[str, Any]:
        self._check_accepting()
        return await self._runner(session_id).send(text, send_id)

    def history(self, session_id: str) -> list[dict[str, Any]]:
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

    async def add_session(self, session_id: str, table: Mapping[str, Any]) -> dict[str, Any]:
        self._check_accepting()
        async with self._lock:
            if session_id in self.runners or session_id in self.broken:
                raise HubError(f"session {session_id!r} already exists (remove it first)")
            try:
                cfg = session_from_table(session_id, table)
            except ConfigError as exc:
                raise HubError("; ".join(str(p) for p in exc.problems)) from exc
            problems = self._unknown_names(cfg)
            if problems:
                raise HubError("; ".join(problems))
            new_overrides = self.overrides.with_session(cfg)
            try:
                write_overrides(self.overrides_path, new_overrides.sessions, new_overrides.removed)
            except ConfigError as exc:
                raise HubError("; ".join(str(p) for p in exc.problems)) from exc
            self.overrides = new_overrides
            self.config = new_overrides.apply(self.config)
            self._add_runner(cfg)
            self._emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, {"session": session_id}))
            self._launch(session_id)
            return self.snapshot(session_id)

    def _unknown_names(self, cfg: SessionConfig) -> list[str]:
        """Transport and token source names that no loaded plugin provides."""
        host = self.plugins
        problems = unknown_name_problems(
            self.config.with_sessions([cfg]),
            senders=[n for n, t in host.transports.items() if t.can_send],
            receivers=[n for n, t in host.transports.items() if t.can_receive],
            token_sources=list(host.token_sources),
        )
        return [str(p) for p in problems]

    async def remove_session(self, session_id: str) -> dict[str, Any]:
        self._check_accepting()
        async with self._lock:
            if session_id not in self.runners and session_id not in self.broken:
                raise UnknownSession(session_id)
            new_overrides = self.overrides.without_session(session_id, self.base_session_ids)
            write_overrides(self.overrides_path, new_overrides.sessions, new_overrides.removed)
            self.overrides = new_overrides
            self.config = new_overrides.apply(self.config)
            await self._drop_runner(session_id, forget_history=True)
            return {"session": session_id, "removed": True}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and the overrides; apply session changes only."""
        self._check_accepting()
        async with self._lock:
            try:
                new = self._load_config()
            except ConfigError as exc:
                raise HubError(f"config not reloaded: {exc}") from exc
            diff = diff_configs(self.config, new)
            # A session that could not be built (e.g. a secret was missing) is tried again.
            retried = [sid for sid in diff.unchanged if sid in self.broken]
            old_ids = set(self.config.sessions)
            self.config = new
            for sid in diff.removed:
                await self._drop_runner(sid, forget_history=True)
            for sid in [*diff.changed, *retried]:
                await self._drop_runner(sid, forget_history=False, replaced=True)
            for sid in [*diff.changed, *retried, *diff.added]:
                self._add_runner(new.sessions[sid])
                if sid not in old_ids:
                    self._emit(HubEvent(HubEventKind.SESSION_ADDED, sid, {"session": sid}))
                self._launch(sid)
            result = {
                "added": list(diff.added),
                "removed": list(diff.removed),
                "changed": [*diff.changed, *retried],
                "unchanged": [sid for sid in diff.unchanged if sid not in retried],
                "needs_restart": list(diff.sections),
            }
            log.info("config_reloaded", **result)
            self.report("config_reloaded", **result)
            return result

    # -- sessions --------------------------------------------------------------------------

    def _add_runner(self, cfg: SessionConfig) -> None:
        try:
            session = build_session(
                cfg, self.plugins, self.services, history_limit=self.config.state.history_limit
            )
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            self.broken[cfg.id] = reason
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
        data = {"session": session_id, "replaced": replaced}
        self._emit(HubEvent(HubEventKind.SESSION_REMOVED, session_id, data))
        log.info("session_removed", session=session_id, replaced=replaced)

    # -- running ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def _request_reload(self) -> None:
        async def reload() -> None:
            systemd.reloading()
            try:
                await self.reload()
            except HubError as exc:
                log.error("config_reload_failed", reason=str(exc))
            finally:
                systemd.notify("READY=1")

        task = asyncio.get_running_loop().create_task(reload(), name="config-reload")
        self._reload_task = task

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        async with AsyncExitStack() as stack:
            stack.callback(self.store.close)
            unfinished = self.intents.pending()  # before a bridge journals anything new
            bridges: list[Any] = []
            for name, spec in self.plugins.bridges.items():
                try:
                    bridge = spec.factory(self, self.config)
                    await stack.enter_async_context(bridge)
                    bridges.append(bridge)
                except Exception as exc:
                    # Without its bridge the daemon would run doing nothing and look healthy:
                    # fail before READY so that systemd (Restart=on-failure) and the operator see it.
                    log.error("bridge_failed", bridge=name, plugin=spec.plugin, error=str(exc))
                    systemd.status(f"bridge {name} failed: {exc}")
                    return 1
                log.info("bridge_started", bridge=name)
            # Reported once bridges observe, so the failures reach MQTT too.
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
            await asyncio.gather(*(self._wait_bridge(b) for b in bridges))
            count = len(self.runners)
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
            reload_task = getattr(self, "_reload_task", None)
            if reload_task is not None and not reload_task.done():
                reload_task.cancel()
            await asyncio.gather(
                *(self._close_runner(r) for r in list(self.runners.values())),
                return_exceptions=True,
            )
        log.info("daemon_stopped")
        return 0

    async def _wait_bridge(self, bridge: Any) -> None:
        wait = getattr(bridge, "wait_ready", None)
        if wait is not None and not await wait(self.bridge_ready_timeout):
            log.warning("bridge_not_ready", bridge=type(bridge).__name__,
                        waited=self.bridge_ready_timeout)

    def _status_line(self, bridges: list[Any]) -> str:
        connected = sum(1 for r in self.runners.values() if r.session.is_connected)
        parts = [f"{connected}/{len(self.runners)} session(s) connected"]
        if self.broken:
            parts.append(f"{len(self.broken)} broken")
        parts.extend(b.status() for b in bridges if hasattr(b, "status"))
        return "; ".join(parts)

    async def _report_status(self, bridges: list[Any], interval: float = 5.0) -> None:
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
