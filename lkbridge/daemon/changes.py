"""Runtime config changes: sessions added and removed over the hub, reloads, the overrides file."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from lkbridge.bridges.hub import (
    HubError,
    HubEvent,
    HubEventKind,
    ReloadResult,
    SessionChange,
    SessionRemoved,
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
from lkbridge.config.models import Config, ConfigError, SessionConfig, diff_configs
from lkbridge.config.runtime import Overrides
from lkbridge.daemon.state import move_aside
from lkbridge.log import get_logger

if TYPE_CHECKING:
    from lkbridge.daemon.core import Daemon

log = get_logger(__name__)


class ConfigChanges:
    """The daemon's config: loaded at start, changed while it runs (add/remove a session, reload).

    Every change is made under the daemon's lock; the daemon keeps the state (config, overrides).
    """

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon
        self._reload_waiting: asyncio.Future[ReloadResult] | None = None

    def load(self) -> Config:
        """Read the config file and the overrides file: the effective config.

        A broken overrides file is ignored (and reported), so the config file's sessions run.
        """
        daemon = self._daemon
        base = load_config(daemon.config_path)
        daemon.base_session_ids = frozenset(base.sessions)
        path = base.state.directory / OVERRIDES_FILE
        try:
            overrides = load_overrides(path)
        except ConfigError as exc:
            # A broken overrides file must not keep the sessions of the config file down: it is
            # ignored (and kept: moved aside before lkbridge writes a new one) and reported.
            problem = "; ".join(str(p) for p in exc.problems)
            overrides = Overrides()
            if problem != daemon.overrides_problem:
                log.error("overrides_ignored", file=str(path), reason=problem)
                daemon._state_notice(
                    {"event": "overrides_ignored", "file": str(path), "reason": problem}
                )
            daemon.overrides_problem = problem
        else:
            daemon.overrides_problem = None
        daemon.overrides = overrides
        # What of the overrides file is not used, said in the log and on bridge/event.
        daemon.override_notes = [*overrides.ignored, *overrides.unresolved(base)]
        for note in daemon.override_notes:
            log.warning("override_ignored", reason=note)
        return overrides.apply(base)

    def report_override_notes(self) -> None:
        daemon = self._daemon
        for note in daemon.override_notes:
            daemon.report("override_ignored", reason=note)

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
        daemon = self._daemon
        daemon._check_accepting()
        control = daemon.config.control
        if not control.runtime_sessions:
            raise HubError("adding sessions at runtime is turned off ([control] runtime_sessions)")
        async with daemon._lock:
            if session_id in daemon.runners or session_id in daemon.broken:
                raise HubError(f"session {session_id!r} already exists (remove it first)")
            if session_id in daemon.base_session_ids and not control.remove_configured:
                raise HubError(
                    f"session {session_id!r} is defined in the config file; it cannot be replaced"
                    " over MQTT ([control] remove_configured)"
                )
            if len(daemon.session_ids()) >= control.max_sessions:
                raise HubError(
                    f"too many sessions: the limit is {control.max_sessions}"
                    " ([control] max_sessions)"
                )
            try:
                runtime = runtime_session(session_id, template, agent_name, agent_metadata)
            except ConfigError as exc:
                raise HubError("; ".join(str(p) for p in exc.problems)) from exc
            source = daemon.config.templates.get(runtime.template)
            if source is None:
                known = ", ".join(daemon.config.templates) or "none ([templates.NAME] in the config)"
                raise HubError(f"template: unknown template {runtime.template!r}; known: {known}")
            cfg = runtime.instantiate(source)
            problems = self._unknown_names(cfg)
            if problems:
                raise HubError("; ".join(problems))
            new_overrides = daemon.overrides.with_session(runtime)
            self.write_overrides(new_overrides)
            daemon.overrides = new_overrides
            daemon.config = new_overrides.apply(daemon.config)
            daemon._add_runner(cfg)
            daemon._emit(HubEvent(HubEventKind.SESSION_ADDED, session_id, SessionChange(session_id)))
            daemon._launch(session_id)
            return daemon.snapshot(session_id)

    def write_overrides(self, overrides: Overrides) -> None:
        """Write the overrides file; a broken one that was ignored is moved aside first."""
        daemon = self._daemon
        path = daemon.overrides_path
        if daemon.overrides_problem is not None and path.exists():
            try:
                aside = move_aside(path, "broken")
            except OSError as exc:
                raise HubError(f"cannot move the broken overrides file aside: {exc}") from exc
            log.warning("overrides_moved_aside", file=str(path), moved_to=str(aside))
            daemon.report("overrides_moved_aside", file=str(path), moved_to=str(aside))
        try:
            write_overrides(
                path,
                overrides.sessions,
                overrides.removed,
                keep_legacy=bool(overrides.ignored),
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            log.error("overrides_not_written", error=reason)
            raise HubError(f"the overrides file cannot be written: {reason}") from exc
        daemon.overrides_problem = None

    def _unknown_names(self, cfg: SessionConfig) -> list[str]:
        """Transport and token source names that no loaded plugin provides."""
        daemon = self._daemon
        host = daemon.plugins
        problems = unknown_name_problems(
            daemon.config.with_sessions([cfg]),
            senders=[n for n, t in host.transports.items() if t.can_send],
            receivers=[n for n, t in host.transports.items() if t.can_receive],
            token_sources=list(host.token_sources),
        )
        return [str(p) for p in problems]

    async def remove_session(self, session_id: str) -> SessionRemoved:
        daemon = self._daemon
        daemon._check_accepting()
        control = daemon.config.control
        if not control.runtime_sessions:
            raise HubError(
                "removing sessions at runtime is turned off ([control] runtime_sessions)"
            )
        async with daemon._lock:
            if session_id not in daemon.runners and session_id not in daemon.broken:
                raise UnknownSession(session_id)
            if session_id in daemon.base_session_ids and not control.remove_configured:
                raise HubError(
                    f"session {session_id!r} is defined in the config file; it cannot be removed"
                    " over MQTT ([control] remove_configured)"
                )
            new_overrides = daemon.overrides.without_session(session_id, daemon.base_session_ids)
            self.write_overrides(new_overrides)
            daemon.overrides = new_overrides
            # Gone from the effective config too (a session added at runtime is not in the
            # base file, so applying the overrides alone would keep it): bridge/info stops
            # listing it and the next reload does not remove it a second time.
            daemon.config = new_overrides.apply(daemon.config).with_sessions(
                cfg for sid, cfg in daemon.config.sessions.items() if sid != session_id
            )
            await daemon._drop_runner(session_id, forget_history=True)
            return SessionRemoved(session_id)

    async def reload(self) -> ReloadResult:
        """Re-read the config file and the overrides; apply session changes only.

        Reloads asked for while one is waiting for its turn share that one (and its answer), so
        a flood of reload requests costs one reload, not one each.
        """
        daemon = self._daemon
        daemon._check_accepting()
        waiting = self._reload_waiting
        if waiting is not None:
            return await asyncio.shield(waiting)
        future: asyncio.Future[ReloadResult] = asyncio.get_running_loop().create_future()
        self._reload_waiting = future
        try:
            async with daemon._lock:
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

    async def _reload_locked(self) -> ReloadResult:
        """The reload itself, under the daemon lock."""
        daemon = self._daemon
        try:
            new = self.load()
        except ConfigError as exc:
            daemon.reload_error = str(exc)
            log.error("config_reload_failed", reason=daemon.reload_error)
            daemon.report("config_reload_failed", error=daemon.reload_error)
            raise HubError(f"config not reloaded: {exc}") from exc
        daemon.reload_error = None
        diff = diff_configs(daemon.config, new)
        # A session that could not be built (e.g. a secret was missing) is tried again.
        retried = [sid for sid in diff.unchanged if sid in daemon.broken]
        old_ids = set(daemon.config.sessions)
        daemon.config = new
        for sid in diff.removed:
            await daemon._drop_runner(sid, forget_history=True)
        for sid in [*diff.changed, *retried]:
            await daemon._drop_runner(sid, forget_history=False, replaced=True)
        for sid in [*diff.changed, *retried, *diff.added]:
            daemon._add_runner(new.sessions[sid])
            if sid not in old_ids:
                daemon._emit(HubEvent(HubEventKind.SESSION_ADDED, sid, SessionChange(sid)))
            daemon._launch(sid)
        result = ReloadResult(
            added=diff.added,
            removed=diff.removed,
            changed=(*diff.changed, *retried),
            unchanged=tuple(sid for sid in diff.unchanged if sid not in retried),
            needs_restart=diff.sections,
        )
        log.info("config_reloaded", **result.to_json())
        daemon.report("config_reloaded", **result.to_json())
        self.report_override_notes()
        return result
