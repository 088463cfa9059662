"""Sessions added at runtime (a template, an id, agent name and metadata) and the overrides file."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from lkbridge.config.models import Config, ConfigError, FrozenMap, Problem, SessionConfig
from lkbridge.config.reader import TableReader, join_path, type_name
from lkbridge.config.schema import SESSION_ID_PATTERN, key_homes, session_id_problem

__all__ = [
    "MAX_AGENT_METADATA",
    "MAX_AGENT_NAME",
    "Overrides",
    "RuntimeSession",
    "overrides_from_dict",
    "runtime_session",
]

MAX_AGENT_NAME = 128
MAX_AGENT_METADATA = 4096


@dataclass(frozen=True, slots=True)
class RuntimeSession:
    """A session added over MQTT: a template of the config file with an id, agent name, metadata.

    Nothing else can be chosen at runtime: token source, secrets, transports and their
    connection settings all come from the operator's `[templates.NAME]`.
    """

    id: str
    template: str
    agent_name: str | None = None
    agent_metadata: str | None = None

    def to_table(self) -> dict[str, Any]:
        """The TOML-able table of the overrides file (without the id)."""
        table: dict[str, Any] = {"template": self.template}
        if self.agent_name is not None:
            table["agent_name"] = self.agent_name
        if self.agent_metadata is not None:
            table["agent_metadata"] = self.agent_metadata
        return table

    def instantiate(self, template: SessionConfig) -> SessionConfig:
        """The session this makes from its template."""
        return dataclasses.replace(
            template,
            id=self.id,
            agent_name=self.agent_name if self.agent_name is not None else template.agent_name,
            agent_metadata=(
                self.agent_metadata if self.agent_metadata is not None else template.agent_metadata
            ),
        )


@dataclass(frozen=True, slots=True)
class Overrides:
    """The runtime overrides file: sessions added over MQTT and ids removed from the base file.

    `ignored` says what of the file was not used (a 0.1 session with its own configuration),
    one sentence each, for the log and `bridge/event`.
    """

    sessions: FrozenMap[str, RuntimeSession] = field(default_factory=FrozenMap)
    removed: frozenset[str] = field(default_factory=frozenset)
    ignored: tuple[str, ...] = field(default=(), compare=False)

    def with_session(self, session: RuntimeSession) -> Overrides:
        """Add or replace a session (and forget any earlier removal of its id)."""
        sessions = dict(self.sessions)
        sessions[session.id] = session
        return Overrides(FrozenMap(sessions), self.removed - {session.id}, self.ignored)

    def without_session(self, session_id: str, base_ids: Collection[str]) -> Overrides:
        """Remove a session; ids defined in the user's file (base_ids) are remembered as removed."""
        sessions = {k: v for k, v in self.sessions.items() if k != session_id}
        removed = self.removed | {session_id} if session_id in base_ids else self.removed
        return Overrides(FrozenMap(sessions), removed, self.ignored)

    def unresolved(self, base: Config) -> list[str]:
        """Sessions whose template the config file no longer has (they are not started)."""
        return [
            f"sessions.{sid}: template {rs.template!r} is not in the config file; not started"
            for sid, rs in self.sessions.items()
            if rs.template not in base.templates
        ]

    def apply(self, base: Config) -> Config:
        """The base config with overrides applied: removals, then overrides win per session id."""
        sessions = {k: v for k, v in base.sessions.items() if k not in self.removed}
        for sid, runtime in self.sessions.items():
            template = base.templates.get(runtime.template)
            if template is not None:
                sessions[sid] = runtime.instantiate(template)
        return dataclasses.replace(base, sessions=FrozenMap(sessions))


_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def runtime_session(
    session_id: str,
    template: object,
    agent_name: object = None,
    agent_metadata: object = None,
    *,
    path: str = "",
) -> RuntimeSession:
    """A session to add at runtime, checked (bounded sizes); raises ConfigError."""
    problems: list[Problem] = []
    where = path or join_path("sessions", session_id)
    id_problem = session_id_problem(session_id)
    if id_problem is not None:
        problems.append(Problem(where, id_problem))
    if not isinstance(template, str) or not SESSION_ID_PATTERN.fullmatch(template):
        problems.append(Problem(f"{where}.template", "must be the name of a [templates.NAME]"))
    if agent_name is not None and (
        not isinstance(agent_name, str)
        or not 0 < len(agent_name) <= MAX_AGENT_NAME
        or not _AGENT_NAME.fullmatch(agent_name)
    ):
        problems.append(Problem(
            f"{where}.agent_name",
            f"must be 1 to {MAX_AGENT_NAME} characters from A-Z, a-z, 0-9, _ . : -"
            " starting with a letter or digit",
        ))
    if agent_metadata is not None and (
        not isinstance(agent_metadata, str) or len(agent_metadata) > MAX_AGENT_METADATA
    ):
        problems.append(Problem(
            f"{where}.agent_metadata", f"must be a string of at most {MAX_AGENT_METADATA} characters"
        ))
    if problems:
        raise ConfigError(problems)
    return RuntimeSession(
        id=session_id,
        template=cast(str, template),
        agent_name=cast("str | None", agent_name),
        agent_metadata=cast("str | None", agent_metadata),
    )


_RUNTIME_KEYS = frozenset({"template", "agent_name", "agent_metadata"})
_LEGACY_IGNORED = (
    "a session with its own configuration (written by lkbridge 0.1) is ignored: sessions added"
    " at runtime now come from a [templates.NAME] of the config file; move this session into"
    " the config file to keep it"
)


def overrides_from_dict(data: Mapping[str, Any], source_name: str = "<dict>") -> Overrides:
    """Validate the overrides file's data: a removed list and sessions made from templates.

    A session table without `template` (the free-form sessions of lkbridge 0.1, which could name
    any secret and address) is never loaded: it is listed in `Overrides.ignored` instead.
    """
    problems: list[Problem] = []
    ignored: list[str] = []
    root = TableReader(data, "", problems, homes=key_homes())
    removed = root.names("removed", ())
    table = root.section("sessions") or TableReader({}, "sessions", problems)
    sessions: dict[str, RuntimeSession] = {}
    for session_id, raw in table.data.items():
        path = join_path("sessions", session_id)
        if not isinstance(raw, Mapping):
            problems.append(Problem(path, f"expected a table, got {type_name(raw)}"))
            continue
        if "template" not in raw:
            ignored.append(f"{path}: {_LEGACY_IGNORED}")
            continue
        unknown = sorted(set(raw) - _RUNTIME_KEYS)
        if unknown:
            problems.append(Problem(join_path(path, unknown[0]), "unknown key"))
            continue
        try:
            sessions[session_id] = runtime_session(
                session_id, raw["template"], raw.get("agent_name"), raw.get("agent_metadata"),
                path=path,
            )
        except ConfigError as exc:
            problems.extend(exc.problems)
    table.seen.update(table.data)
    root.finish()
    if problems:
        raise ConfigError(problems, source=source_name)
    return Overrides(FrozenMap(sessions), frozenset(removed), tuple(ignored))
