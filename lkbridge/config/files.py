"""Config files: TOML in and out (the only tomllib/tomli_w user), overrides, starter config."""

# Validation lives in config_schema (plain data to models); this module adds the files. The
# public config API is re-exported here, so `from lkbridge.config.files import ...` is enough.

from __future__ import annotations

import contextlib
import os
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

import tomli_w

from lkbridge.config.models import (
    Config,
    ConfigDiff,
    ConfigError,
    ControlConfig,
    DevelopmentTokenConfig,
    EndpointTokenConfig,
    FrozenMap,
    HomeAssistantConfig,
    LiteralTokenConfig,
    LogConfig,
    MintedTokenConfig,
    MqttConfig,
    MqttProtocol,
    Overrides,
    PluginsConfig,
    PluginTokenConfig,
    Problem,
    RuntimeSession,
    SessionConfig,
    StateConfig,
    TlsConfig,
    TokenConfig,
    diff_configs,
)
from lkbridge.config.schema import (
    BUILTIN_TOKEN_SOURCES,
    SESSION_ID_PATTERN,
    config_from_dict,
    overrides_from_dict,
    runtime_session,
    session_from_table,
    unknown_name_problems,
)
from lkbridge.config.secrets import Secret, SecretError, SecretKind

__all__ = [
    "BUILTIN_TOKEN_SOURCES",
    "OVERRIDES_FILE",
    "SESSION_ID_PATTERN",
    "Config",
    "ConfigDiff",
    "ConfigError",
    "ControlConfig",
    "DevelopmentTokenConfig",
    "EndpointTokenConfig",
    "FrozenMap",
    "HomeAssistantConfig",
    "LiteralTokenConfig",
    "LogConfig",
    "MintedTokenConfig",
    "MqttConfig",
    "MqttProtocol",
    "Overrides",
    "PluginTokenConfig",
    "PluginsConfig",
    "Problem",
    "RuntimeSession",
    "Secret",
    "SecretError",
    "SecretKind",
    "SessionConfig",
    "StateConfig",
    "TlsConfig",
    "TokenConfig",
    "config_from_dict",
    "diff_configs",
    "load_config",
    "load_config_data",
    "load_effective_config",
    "load_overrides",
    "parse_config",
    "runtime_session",
    "session_from_table",
    "session_to_table",
    "unknown_name_problems",
    "write_overrides",
    "write_starter_config",
]

OVERRIDES_FILE: Final = "overrides.toml"


def parse_config(
    text: str,
    source_name: str = "<string>",
    *,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
    resolve_secrets: bool = False,
) -> Config:
    """Parse TOML text into a Config; raises ConfigError listing every problem with its path.

    Secrets are resolved lazily (Secret.reveal) unless resolve_secrets is true, in which case
    every env var, file and credential must be available now.
    """
    data = _loads(text, source_name)
    return config_from_dict(
        data, source_name, environ=environ, hostname=hostname, resolve_secrets=resolve_secrets
    )


def _loads(text: str, source_name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem(source_name, f"invalid TOML: {exc}")], source_name) from exc
    except RecursionError as exc:  # tomllib recurses per nested array or inline table
        problem = Problem(source_name, "invalid TOML: arrays or tables nested too deeply")
        raise ConfigError([problem], source_name) from exc
    except ValueError as exc:  # tomllib lets int() refuse integers of over 4300 digits
        reason = str(exc).split(";")[0]
        raise ConfigError([Problem(source_name, f"invalid TOML: {reason}")], source_name) from exc


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([Problem(str(path), "file does not exist")], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), "is not UTF-8 text")], str(path)) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(str(path), f"cannot be read: {reason}")], str(path)) from exc


def load_config_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The file's TOML as plain data (not validated); raises ConfigError."""
    return _loads(_read(Path(path)), str(path))


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
    resolve_secrets: bool = False,
) -> Config:
    """Read and validate a TOML config file (without the runtime overrides)."""
    file = Path(path)
    return parse_config(
        _read(file), str(file), environ=environ, hostname=hostname, resolve_secrets=resolve_secrets
    )


def session_to_table(session: SessionConfig) -> dict[str, Any]:
    """The session as a TOML-able table; raises ConfigError if it holds an inline secret."""
    return session.to_table()


def load_overrides(path: str | os.PathLike[str]) -> Overrides:
    """Read the runtime overrides file; a missing file means no overrides."""
    file = Path(path)
    if not file.exists():
        return Overrides()
    return overrides_from_dict(_loads(_read(file), str(file)), str(file))


LEGACY_BACKUP_SUFFIX: Final = ".0.1-backup"


def write_overrides(
    path: str | os.PathLike[str],
    sessions: Mapping[str, RuntimeSession] | Iterable[RuntimeSession],
    removed: Iterable[str] = (),
    *,
    keep_legacy: bool = False,
) -> None:
    """Atomically write the overrides file: each session is only its template, agent name and
    metadata, so no secret, URL or address is ever written.

    keep_legacy: the file being replaced holds 0.1 sessions that are ignored; it is copied once
    to `overrides.toml.0.1-backup` (mode 0600) before they are dropped from it.
    """
    file = Path(path)
    items = list(sessions.values() if isinstance(sessions, Mapping) else sessions)
    tables = {session.id: session.to_table() for session in items}
    data: dict[str, Any] = {"removed": sorted(set(removed)), "sessions": tables}
    header = (
        "# Written by lkbridge: sessions added or removed at runtime over MQTT.\n"
        "# Each added session names a [templates.NAME] of the config file. Edit only while\n"
        "# lkbridge is stopped.\n\n"
    )
    if keep_legacy:
        backup = file.with_name(file.name + LEGACY_BACKUP_SUFFIX)
        if file.exists() and not backup.exists():
            _write_atomically(backup, _read(file), mode=0o600)
    _write_atomically(file, header + tomli_w.dumps(data), mode=0o600)


def _write_atomically(path: Path, text: str, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def load_effective_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
    resolve_secrets: bool = False,
) -> Config:
    """The user's config file with the overrides file from its state directory applied."""
    base = load_config(path, environ=environ, hostname=hostname, resolve_secrets=resolve_secrets)
    return load_overrides(base.state.directory / OVERRIDES_FILE).apply(base)


STARTER_HEADER = """\
# lkbridge configuration, written by `lkbridge init`.
# Every key, documented: `lkbridge init --print-example` (and docs/configuration.md).
# Check it with: lkbridge check -c THIS_FILE
#
# The demo session mints tokens for a LiveKit server (`livekit-server --dev` uses the API key
# "devkey"); its secret is read from the LIVEKIT_API_SECRET environment variable (under systemd,
# use a credential instead: api_secret = { credential = "livekit-api-secret" }).
# Set agent_name to the name your agent worker registers with.

"""


def write_starter_config(path: str | os.PathLike[str]) -> None:
    """Write a valid starter config; refuses (ConfigError) to overwrite an existing file."""
    file = Path(path)
    data = {
        "mqtt": {"server": "mqtt://127.0.0.1:1883", "base_topic": "lkbridge"},
        "log": {"level": "info", "format": "auto"},
        "homeassistant": {"enabled": True, "discovery_prefix": "homeassistant"},
        "sessions": {
            "demo": {
                "agent_name": "my-agent",
                "autostart": True,
                "token": {
                    "source": "minted",
                    "url": "ws://127.0.0.1:7880",
                    "api_key": "devkey",
                    "api_secret": {"env": "LIVEKIT_API_SECRET"},
                },
            }
        },
    }
    text = STARTER_HEADER + tomli_w.dumps(data)
    try:
        if not file.parent.exists():
            # e.g. /etc/lkbridge on a fresh machine: 0755 whatever the umask, as the unit's
            # ConfigurationDirectoryMode (the service's dynamic user must enter it)
            file.parent.mkdir(parents=True)
            os.chmod(file.parent, 0o755)
        # 0644 whatever the umask: a service's dynamic user must read it, and it holds no
        # secrets (those are references to env vars, files or systemd credentials).
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
    except FileExistsError as exc:
        message = "already exists; refusing to overwrite it (choose another path or remove it)"
        raise ConfigError([Problem(str(file), message)], str(file)) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(str(file), f"cannot be written: {reason}")], str(file)) from exc
