"""`lkbridge check`: validate a config file against the schema and the installed plugins."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lkbridge.config.files import (
    OVERRIDES_FILE,
    config_from_dict,
    load_config_data,
    load_overrides,
)
from lkbridge.config.models import Config, ConfigError, Problem
from lkbridge.config.schema import unknown_names_in_data
from lkbridge.config.secrets import SecretError, SecretKind
from lkbridge.plugins.host import load_plugins


def _secret_problems(config: Config) -> tuple[list[Problem], list[str]]:
    """Problems with secrets, and notes for systemd credentials that only exist in the service."""
    problems: list[Problem] = []
    notes: list[str] = []
    outside_service = not os.environ.get("CREDENTIALS_DIRECTORY")
    for secret in config.secrets():
        if secret.kind is SecretKind.CREDENTIAL and outside_service:
            notes.append(f"{secret.path}: a systemd credential; checked when the service starts")
            continue
        try:
            secret.reveal()
        except SecretError as exc:
            problems.append(Problem(exc.path, exc.message))
    return problems, notes


def check_config_file(path: str | Path) -> tuple[bool, str]:
    """(ok, text): a one-line summary, or every problem with its TOML path, one per line.

    Schema problems, names no plugin provides, secrets and the overrides file in the state
    directory are all reported in one run.
    """
    try:
        data = load_config_data(path)
    except ConfigError as exc:
        return False, _render(path, exc.problems)
    problems: list[Problem] = []
    notes: list[str] = []
    config: Config | None = None
    try:
        config = config_from_dict(data, str(path))
    except ConfigError as exc:
        problems += exc.problems
    host = load_plugins(config.plugins.disable if config is not None else _disabled(data))
    senders = [n for n, spec in host.transports.items() if spec.can_send]
    receivers = [n for n, spec in host.transports.items() if spec.can_receive]
    problems += unknown_names_in_data(
        data, senders=senders, receivers=receivers, token_sources=list(host.token_sources)
    )
    if config is not None:
        secret_problems, notes = _secret_problems(config)
        override_problems, ignored = _overrides_problems(config)
        problems += secret_problems + override_problems
        notes += ignored
    if problems or config is None:
        return False, _render(path, problems)
    sessions = ", ".join(config.sessions) or "none"
    summary = (
        f"{path}: OK — {len(config.sessions)} session(s) ({sessions}); MQTT "
        f"{config.mqtt.host}:{config.mqtt.port} base topic {config.mqtt.base_topic!r}"
    )
    if config.templates:
        summary += f"; {len(config.templates)} template(s) ({', '.join(config.templates)})"
    return True, "\n".join([summary, *(f"  note: {n}" for n in notes)])


def _disabled(data: Mapping[str, Any]) -> list[str]:
    """[plugins] disable from data the schema refused (valid names only)."""
    table = data.get("plugins")
    names = table.get("disable") if isinstance(table, Mapping) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _overrides_problems(config: Config) -> tuple[list[Problem], list[str]]:
    """Problems in the sessions added over MQTT (the overrides file), and what it ignores."""
    path = config.state.directory / OVERRIDES_FILE
    try:
        overrides = load_overrides(path)
    except ConfigError as exc:
        return list(exc.problems), []
    except OSError as exc:
        return [Problem(str(path), f"cannot be read: {exc.strerror or exc}")], []
    return [], [f"{path}: {note}" for note in overrides.ignored]


def _render(path: str | Path, problems: list[Problem]) -> str:
    lines = [f"{path}: {len(problems)} problem(s):"]
    lines.extend(f"  {problem}" for problem in problems)
    return "\n".join(lines)
