"""`lkbridge check`: validate a config file against the schema and the installed plugins."""

from __future__ import annotations

import os
from pathlib import Path

from lkbridge.config.files import OVERRIDES_FILE, load_config, load_overrides, unknown_name_problems
from lkbridge.config.models import Config, ConfigError, Problem
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
    """(ok, text): a one-line summary, or every problem with its TOML path, one per line."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return False, _render(path, exc.problems)
    # The sessions the daemon would run: the runtime overrides from the state directory too.
    overrides_path = config.state.directory / OVERRIDES_FILE
    overrides_problems: list[Problem] = []
    from_overrides = 0
    try:
        overrides = load_overrides(overrides_path)
    except ConfigError as exc:
        note = " (lkbridge ignores this file and runs the config file's sessions only)"
        where = str(overrides_path)
        overrides_problems = [
            Problem(p.path if p.path.startswith(where) else f"{where}: {p.path}", p.message + note)
            for p in exc.problems
        ]
    else:
        from_overrides = len(overrides.sessions)
        config = overrides.apply(config)
    problems, notes = _secret_problems(config)
    problems = overrides_problems + problems
    host = load_plugins(config.plugins.disable)
    senders = [n for n, spec in host.transports.items() if spec.can_send]
    receivers = [n for n, spec in host.transports.items() if spec.can_receive]
    problems += unknown_name_problems(
        config, senders=senders, receivers=receivers, token_sources=list(host.token_sources)
    )
    if problems:
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


def _render(path: str | Path, problems: list[Problem]) -> str:
    lines = [f"{path}: {len(problems)} problem(s):"]
    lines.extend(f"  {problem}" for problem in problems)
    return "\n".join(lines)
