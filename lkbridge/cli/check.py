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
    from_overrides = 0
    overrides_path = None
    if config is not None:
        # The sessions the daemon would run: the runtime overrides from the state directory too.
        overrides_path = config.state.directory / OVERRIDES_FILE
        config, from_overrides, override_problems, ignored = _with_overrides(config, overrides_path)
        secret_problems, notes = _secret_problems(config)
        problems += override_problems + secret_problems
        notes += ignored
    host = load_plugins(config.plugins.disable if config is not None else _disabled(data))
    senders = [n for n, spec in host.transports.items() if spec.can_send]
    receivers = [n for n, spec in host.transports.items() if spec.can_receive]
    problems += unknown_names_in_data(
        data, senders=senders, receivers=receivers, token_sources=list(host.token_sources)
    )
    if problems or config is None:
        return False, _render(path, problems)
    sessions = ", ".join(config.sessions) or "none"
    if from_overrides:
        sessions += f"; {from_overrides} from {overrides_path}"
    summary = (
        f"{path}: OK — {len(config.sessions)} session(s) ({sessions}); MQTT "
        f"{config.mqtt.host}:{config.mqtt.port} base topic {config.mqtt.base_topic!r}"
    )
    if config.templates:
        summary += f"; {len(config.templates)} template(s) ({', '.join(config.templates)})"
    for session_id, cfg in config.sessions.items():
        if cfg.wyoming is not None:
            where = f"{cfg.wyoming.host}:{cfg.wyoming.port}"
            exposed = "" if cfg.wyoming.host.startswith("127.") else " (no authentication: LAN only)"
            notes.append(f"{session_id}: Wyoming (Home Assistant Assist) on {where}{exposed}")
    return True, "\n".join([summary, *(f"  note: {n}" for n in notes)])


def _disabled(data: Mapping[str, Any]) -> list[str]:
    """[plugins] disable from data the schema refused (valid names only)."""
    table = data.get("plugins")
    names = table.get("disable") if isinstance(table, Mapping) else None
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


def _with_overrides(
    config: Config, overrides_path: Path
) -> tuple[Config, int, list[Problem], list[str]]:
    """The config with the overrides file applied, how many sessions it adds, its problems
    (the daemon then ignores the file) and what of it is ignored."""
    try:
        overrides = load_overrides(overrides_path)
    except ConfigError as exc:
        note = " (lkbridge ignores this file and runs the config file's sessions only)"
        where = str(overrides_path)
        problems = [
            Problem(p.path if p.path.startswith(where) else f"{where}: {p.path}", p.message + note)
            for p in exc.problems
        ]
        return config, 0, problems, []
    except OSError as exc:
        return config, 0, [Problem(str(overrides_path), f"cannot be read: {exc.strerror}")], []
    ignored = [f"{overrides_path}: {note}" for note in overrides.ignored]
    return overrides.apply(config), len(overrides.sessions), [], ignored


def _render(path: str | Path, problems: list[Problem]) -> str:
    lines = [f"{path}: {len(problems)} problem(s):"]
    lines.extend(f"  {problem}" for problem in problems)
    return "\n".join(lines)
