"""Transport and token source names that no loaded plugin provides (checked after the schema)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from difflib import get_close_matches
from typing import Any

from lkbridge.config.models import Config, Problem
from lkbridge.config.reader import join_path
from lkbridge.config.schema import BUILTIN_TOKEN_SOURCES

__all__ = ["unknown_name_problems", "unknown_names_in_data"]


def unknown_name_problems(
    config: Config,
    *,
    senders: Collection[str],
    receivers: Collection[str],
    token_sources: Collection[str],
) -> list[Problem]:
    """Problems for transport and token source names no plugin provides (checked after loading)."""
    named = [
        (table, sid, s.senders, s.receivers, s.token.source)
        for table, sessions in (("sessions", config.sessions), ("templates", config.templates))
        for sid, s in sessions.items()
    ]
    return _name_problems(named, senders, receivers, token_sources)


_Named = tuple[str, str, tuple[str, ...], tuple[str, ...], str | None]  # table, id, names, source


def unknown_names_in_data(
    data: Mapping[str, Any],
    *,
    senders: Collection[str],
    receivers: Collection[str],
    token_sources: Collection[str],
) -> list[Problem]:
    """unknown_name_problems on raw config data, so that `check` can report them with the
    schema's own problems in one run (what is not a name is the schema's problem)."""

    def names(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(key)
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()

    named: list[_Named] = []
    for kind in ("sessions", "templates"):
        sessions = data.get(kind)
        for sid, table in (sessions.items() if isinstance(sessions, Mapping) else ()):
            if not isinstance(table, Mapping):
                continue
            token = table.get("token")
            source = token.get("source") if isinstance(token, Mapping) else None
            source = source if isinstance(source, str) and source else None
            named.append((kind, sid, names(table, "senders"), names(table, "receivers"), source))
    return _name_problems(named, senders, receivers, token_sources)


def _name_problems(
    named: Sequence[_Named],
    senders: Collection[str],
    receivers: Collection[str],
    token_sources: Collection[str],
) -> list[Problem]:
    problems: list[Problem] = []
    known_sources = [*BUILTIN_TOKEN_SOURCES, *token_sources]

    def check(path: str, name: str, known: Collection[str], what: str) -> None:
        if name not in known:
            close = get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(sorted(known)) or "none"
            problems.append(Problem(path, f"unknown {what} {name!r}{hint}; known: {listed}"))

    for table, session_id, session_senders, session_receivers, source in named:
        path = join_path(table, session_id)
        for index, name in enumerate(session_senders):
            check(f"{path}.senders[{index}]", name, senders, "sender")
        for index, name in enumerate(session_receivers):
            check(f"{path}.receivers[{index}]", name, receivers, "receiver")
        if source is not None:
            check(f"{path}.token.source", source, known_sources, "token source")
    return problems
