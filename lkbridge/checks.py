"""`lkbridge check`: validate a config file against the schema and the installed plugins."""

from __future__ import annotations

from pathlib import Path

from lkbridge.config import load_config, unknown_name_problems
from lkbridge.config_models import ConfigError, Problem
from lkbridge.plugins import load_plugins


def check_config_file(path: str | Path) -> tuple[bool, str]:
    """(ok, text): a one-line summary, or every problem with its TOML path, one per line."""
    try:
        config = load_config(path, resolve_secrets=True)
    except ConfigError as exc:
        return False, _render(path, exc.problems)
    host = load_plugins(config.plugins.disable)
    senders = [n for n, spec in host.transports.items() if spec.can_send]
    receivers = [n for n, spec in host.transports.items() if spec.can_receive]
    problems = unknown_name_problems(
        config, senders=senders, receivers=receivers, token_sources=list(host.token_sources)
    )
    if problems:
        return False, _render(path, problems)
    sessions = ", ".join(config.sessions) or "none"
    return True, (
        f"{path}: OK — {len(config.sessions)} session(s) ({sessions}); MQTT "
        f"{config.mqtt.host}:{config.mqtt.port} base topic {config.mqtt.base_topic!r}"
    )


def _render(path: str | Path, problems: list[Problem]) -> str:
    lines = [f"{path}: {len(problems)} problem(s):"]
    lines.extend(f"  {problem}" for problem in problems)
    return "\n".join(lines)
