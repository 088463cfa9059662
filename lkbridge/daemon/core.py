"""The daemon: hosts the configured sessions, implements the hub, starts bridges, handles signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from lkbridge import __version__
from lkbridge.backoff import Backoff
from lkbridge.bridges.hub import (
    Bridge,
    DaemonNotice,
    ErrorInfo,
    HubError,
    HubEvent,
    HubEventKind,
    HubListener,
    SessionChange,
    SessionSnapshot,
    UnknownSession,
)
from lkbridge.config.files import (
    OVERRIDES_FILE,
    load_config,
    load_overrides,
    runtime_session,
    unknown_name_problems,
    write_overrides,
)
from lkbridge.config.models import Config, ConfigError, Overrides, SessionConfig, diff_configs
from lkbridge.daemon import systemd
from lkbridge.daemon.assembly import build_session
from lkbridge.daemon.bridges import BridgeFailed, enter_bridges, no_bridge_refusal, wait_ready
from lkbridge.daemon.runner import SessionRunner
from lkbridge.daemon.state import HistoryOpening, move_aside, open_history
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
        self.config: Config = self._load_config()
        self.plugins = plugins or load_plugins(self.config.plugins.disable)
        self.history_opening: HistoryOpening = open_history(
            self.config.state.directory, history_limit=self.config.state.history_limit
        )
        self.store = self.history_opening.store
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
        self._reload_waiting: asyncio.Future[dict[str, Any]] | None = None
        self.bridge_ready_timeout = 5.0

    # -- config ----------------------------------------------------------------------------

    @property
    def overrides_path(self) -> Path:
        return self.config.state.directory / OVERRIDES_FILE

    def _load_config(self) -> Config:
        base = load_config(self.config_path)
        self.base_session_ids = frozenset(base.sessions)
        path = base.state.directory / OVERRIDES_FILE
        try:
            overrides = load_overrides(path)
        except ConfigError as exc:
            # A broken overrides file must not keep the sessions of the config file down: it is
            # ignored (and kept: moved aside before lkbridge writes a new one) and reported.
            problem = "; ".join(str(p) for p in exc.problems)
            overrides = Overrides()
            if problem != self.overrides_problem:
                log.error("overrides_ignored", file=str(path), reason=problem)
                self._state_notice(
                    {"event": "overrides_ignored", "file": str(path), "reason": problem}
                )
            self.overrides_problem = problem
        else:
            self.overrides_problem = None
        self.overrides: Overrides = overrides
        # What of the overrides file is not used, said in the log and on bridge/event.
        self.override_notes = [*overrides.ignored, *overrides.unresolved(base)]
        for note in self.override_notes:
            log.warning("override_ignored", reason=note)
        return overrides.apply(base)

    def _report_override_notes(self) -> None:
        for note in self.override_notes:
            self.report("override_ignored", reason=note)

    def _state_notice(self, notice: dict[str, Any]) -> None:
        """Report on bridge/event now, or as soon as the bridges observe (at start)."""
        if self._bridges_up:
            self.report(**notice)
        else:
            self._startup_notices.append(notice)

    def state_status(self) -> dict[str, Any]:
        """What is wrong with the state directory, for bridge/info and health_check."""
        return {
            "directory": str(self.config.state.directory),
            "history": self.history_opening.status(),
            "overrides_problem": self.overrides_problem,
        }

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

    def info(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "sessions": self.session_ids(),
            "plugins": self.plugins.describe(),
            "plugin_conflicts": list(self.plugins.conflicts),
            "config": self.config.redacted(),
            "state": self.state_status(),
            "last_reload_error": self.reload_error,
        }

    def health(self) -> dict[str, Any]:
        states = {sid: r.session.connection_state.value for sid, r in self.runners.items()}
        return {
            "status": "ok",
            "uptime": round(time.monotonic() - self._started_at, 1),
            "sessions": states,
            "broken_sessions": dict(self.broken),
            "state": self.state_status(),
            "last_reload_error": self.reload_error,
        }

    # -- hub: commands ---------------------------------------------------------------------

    def _check_accepting(self) -> None:
        if not self._accepting:
            raise HubError("lkbridge is shutting down")

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

    def history(self, session_id: str) -> list[dict[str, Any]]:
        runner = self._runner(session_id)
        return [runner.message_event(m).to_json() for m in runner.session.get_message_history()]

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
        """Add a session made from a [templates.NAME] of the config file (nothing else can be
        chosen at runtime); persisted in the overrides file."""
        self._check_accepting()
        control = self.config.control
        if not control.runtime_sessions:
            raise HubError("adding sessions at runtime is turned off ([control] runtime_sessions)")
        async with self._lock:
            if session_id in self.runners or session_id in self.broken:
                raise HubError(f"session {session_id!r} already exists (remove it first)")
            if session_id in self.base_session_ids and not control.remove_configured:
                raise HubError(
                    f"session {session_id!r} is defined in the config file; it cannot be replaced"
                    " over MQTT ([control] remove_configured)"
                )
            if len(self.session_ids()) >= control.max_sessions:
                raise HubError(
                    f"too many sessions: the limit is {control.max_sessions}"
                    " ([control] max_sessions)"
                )
            try:
                runtime = runtime_session(session_id, template, agent_name, agent_metadata)
            except ConfigError as exc:
                raise HubError("; ".join(str(p) for p in exc.problems)) from exc
            source = self.config.templates.get(runtime.template)
            if source is None:
                known = ", ".join(self.config.templates) or "none ([templates.NAME] in the config)"
                raise HubError(f"template: unknown template {runtime.template!r}; known: {known}")
            cfg = runtime.instantiate(source)
            problems = self._unknown_names(cfg)
            if problems:
                raise HubError("; ".join(problems))
            new_overrides = self.overrides.with_session(runtime)
            self._write_overrides(new_overrides)
            self.overrides = new_overrides
            self.config = new_overrides.apply(self.config)
            self._add_runner(cfg)
            self._emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, SessionChange(session_id)))
            self._launch(session_id)
            return self.snapshot(session_id)

    def _write_overrides(self, overrides: Overrides) -> None:
        """Write the overrides file; a broken one that was ignored is moved aside first."""
        if self.overrides_problem is not None and self.overrides_path.exists():
            try:
                aside = move_aside(self.overrides_path, "broken")
            except OSError as exc:
                raise HubError(f"cannot move the broken overrides file aside: {exc}") from exc
            log.warning("overrides_moved_aside", file=str(self.overrides_path), moved_to=str(aside))
            self.report("overrides_moved_aside", file=str(self.overrides_path), moved_to=str(aside))
        try:
            write_overrides(
                self.overrides_path,
                overrides.sessions,
                overrides.removed,
                keep_legacy=bool(overrides.ignored),
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            log.error("overrides_not_written", error=reason)
            raise HubError(f"the overrides file cannot be written: {reason}") from exc
        self.overrides_problem = None

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
        control = self.config.control
        if not control.runtime_sessions:
            raise HubError(
                "removing sessions at runtime is turned off ([control] runtime_sessions)"
            )
        async with self._lock:
            if session_id not in self.runners and session_id not in self.broken:
                raise UnknownSession(session_id)
            if session_id in self.base_session_ids and not control.remove_configured:
                raise HubError(
                    f"session {session_id!r} is defined in the config file; it cannot be removed"
                    " over MQTT ([control] remove_configured)"
                )
            new_overrides = self.overrides.without_session(session_id, self.base_session_ids)
            self._write_overrides(new_overrides)
            self.overrides = new_overrides
            # Gone from the effective config too (a session added at runtime is not in the
            # base file, so applying the overrides alone would keep it): bridge/info stops
            # listing it and the next reload does not remove it a second time.
            self.config = new_overrides.apply(self.config).with_sessions(
                cfg for sid, cfg in self.config.sessions.items() if sid != session_id
            )
            await self._drop_runner(session_id, forget_history=True)
            return {"session": session_id, "removed": True}

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and the overrides; apply session changes only.

        Reloads asked for while one is waiting for its turn share that one (and its answer), so
        a flood of reload requests costs one reload, not one each.
        """
        self._check_accepting()
        waiting = self._reload_waiting
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reload_waiting = future
        try:
            async with self._lock:
                if self._reload_waiting is future:
                    self._reload_waiting = None  # from now on a new request reads the file again
                result = await self._reload_locked()
        except BaseException as exc:
            if self._reload_waiting is future:
                self._reload_waiting = None
            if not future.done():
                future.set_exception(exc if isinstance(exc, Exception) else HubError("cancelled"))
                future.exception()  # retrieved: nobody else may be waiting
            raise
        future.set_result(result)
        return result

    async def _reload_locked(self) -> dict[str, Any]:
        """The reload itself, under the daemon lock."""
        try:
            new = self._load_config()
        except ConfigError as exc:
            self.reload_error = str(exc)
            log.error("config_reload_failed", reason=self.reload_error)
            self.report("config_reload_failed", error=self.reload_error)
            raise HubError(f"config not reloaded: {exc}") from exc
        self.reload_error = None
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
                self._emit(HubEvent(HubEventKind.SESSION_ADDED, sid, SessionChange(sid)))
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
        self._report_override_notes()
        return result

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
        runner = SessionRunner(cfg, session, self.store, self._emit, backoff=Backoff(*self._backoff))
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
                    f"{k} {len(v)}" for k, v in result.items() if v
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
            try:
                bridges = await enter_bridges(stack, self, self.plugins, self.config)
            except BridgeFailed as exc:
                # Without its bridge the daemon would run doing nothing and look healthy:
                # fail before READY so that systemd (Restart=on-failure) and the operator see it.
                systemd.status(str(exc))
                return 1
            # Reported once bridges observe, so the failures reach MQTT too.
            self._report_override_notes()
            for failure in self.plugins.failures():
                self.report("plugin_failed", plugin=failure.name, distribution=failure.distribution,
                            version=failure.version, error=failure.error)
            # Sessions are built and launched before anything a bridge receives is carried
            # out (a command queued by the broker arrives right after the bridge connects).
            for cfg in self.config.sessions.values():
                self._add_runner(cfg)
            for sid in list(self.runners):
                self._launch(sid)
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
