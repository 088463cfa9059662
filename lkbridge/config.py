"""Configuration: TOML in and out (the only tomllib/tomli_w user), validation and overrides."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import date, datetime, time
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import urlsplit

import tomli_w

from lkbridge.config_models import (
    DEFAULT_DEVELOPMENT_BASE_URL,
    Config,
    ConfigDiff,
    ConfigError,
    DevelopmentTokenConfig,
    EndpointTokenConfig,
    FrozenMap,
    HomeAssistantConfig,
    LiteralTokenConfig,
    LogConfig,
    LogFormat,
    LogLevel,
    MintedTokenConfig,
    MqttConfig,
    MqttProtocol,
    Overrides,
    PluginsConfig,
    PluginTokenConfig,
    Problem,
    SessionConfig,
    StateConfig,
    TlsConfig,
    TokenConfig,
    default_client_id,
    diff_configs,
)
from lkbridge.config_secrets import (
    REFERENCE_KINDS,
    Secret,
    SecretError,
    SecretKind,
    looks_secret,
    parse_secret,
)

__all__ = [
    "BUILTIN_TOKEN_SOURCES",
    "OVERRIDES_FILE",
    "SESSION_ID_PATTERN",
    "Config",
    "ConfigDiff",
    "ConfigError",
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
    "load_effective_config",
    "load_overrides",
    "parse_config",
    "session_from_table",
    "session_to_table",
    "unknown_name_problems",
    "write_overrides",
    "write_starter_config",
]

SESSION_ID_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,64}")
OVERRIDES_FILE: Final = "overrides.toml"
BUILTIN_TOKEN_SOURCES: Final = ("minted", "literal", "endpoint", "development")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # plugin, transport, token source names
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_WS = ("ws", "wss", "http", "https")
_HTTP = ("http", "https")
_INLINE_REFUSED = (
    "an inline secret cannot be stored by lkbridge; give it as a reference:"
    ' { env = "NAME" }, { file = "/path" } or { credential = "NAME" }'
)
_BAD_SESSION_ID = "session id must be 1 to 64 characters from a-z, 0-9, _ and -"
_LEVELS: Final = ("debug", "info", "warning", "error")
_FORMATS: Final = ("auto", "json", "console")
_MISSING: Final = object()


def _join(path: str, key: str) -> str:
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (Mapping, "a table"),
        (list, "an array"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    allowed = ", ".join(f"{s}://" for s in schemes[:-1]) + f" or {schemes[-1]}://"
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return f"is not a valid URL (must be {allowed})"
    if parts.scheme.lower() not in schemes:
        return f"must be {allowed}"
    if not host:
        return "must include a host name"
    return None


def _topic_problem(value: str) -> str | None:
    if "+" in value or "#" in value:
        return "must not contain the MQTT wildcards + or #"
    if "\0" in value:
        return "must not contain NUL characters"
    if any(level == "" for level in value.split("/")):
        return "must not have empty topic levels (a leading, trailing or double /)"
    if value.startswith("$"):
        return "must not start with $ (reserved for the broker)"
    return None


class _Table:
    """Reads one TOML table, recording every problem at its path and which keys were used."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: list[Problem]) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def report(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.at(key), message))

    def take(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, _MISSING)

    def _typed(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        value = self.take(key)
        if value is not _MISSING and not check(value):
            self.report(key, f"expected {expected}, got {_type_name(value)}")
            return _MISSING
        return value

    def opt_string(self, key: str, *, nonempty: bool = True) -> str | None:
        value = self._typed(key, lambda v: isinstance(v, str), "a string")
        if value is _MISSING:
            return None
        if nonempty and not value:
            self.report(key, "must not be empty")
            return None
        return str(value)

    def string(self, key: str, default: str) -> str:
        value = self.opt_string(key)
        return default if value is None else value

    def required_string(self, key: str) -> str:
        if key not in self.data:
            self.take(key)
            self.report(key, "is required")
            return ""
        return self.string(key, "")

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.report(key, f"must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._typed(key, _is_int, "an integer")
        if value is _MISSING:
            return default
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.report(key, f"must be {bounds}, got {value}")
            return default
        return int(value)

    def positive_number(self, key: str, default: float) -> float:
        value = self._typed(key, lambda v: _is_int(v) or isinstance(v, float), "a number")
        if value is _MISSING:
            return default
        if not math.isfinite(value) or value <= 0:
            self.report(key, f"must be a number greater than 0, got {value}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, lambda v: isinstance(v, bool), "true or false")
        return default if value is _MISSING else bool(value)

    def names(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._typed(key, lambda v: isinstance(v, list), "an array of names")
        if value is _MISSING:
            return default
        names: list[str] = []
        for index, item in enumerate(value):
            where = f"{self.at(key)}[{index}]"
            if not isinstance(item, str) or not _NAME.fullmatch(item):
                shown = repr(item) if isinstance(item, str) else _type_name(item)
                self.problems.append(Problem(where, f"must be a name like chat, got {shown}"))
            elif item in names:
                self.problems.append(Problem(where, f"{item!r} is listed twice"))
            else:
                names.append(item)
        return tuple(names)

    def str_map(self, key: str) -> FrozenMap[str, str]:
        value = self._typed(key, lambda v: isinstance(v, Mapping), "a table of strings")
        if value is _MISSING:
            return FrozenMap()
        for item_key, item in value.items():
            if not isinstance(item, str):
                self.problems.append(
                    Problem(
                        _join(self.at(key), item_key), f"expected a string, got {_type_name(item)}"
                    )
                )
        return FrozenMap((k, v) for k, v in value.items() if isinstance(v, str))

    def secret(self, key: str, *, required: bool, inline_ok: bool) -> Secret | None:
        value = self.take(key)
        if value is _MISSING:
            if required:
                self.report(key, "is required")
            return None
        return _secret_at(value, self.at(key), self.problems, inline_ok)

    def url(self, key: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        value = self.required_string(key) if default is None else self.string(key, default)
        if value:
            problem = _url_problem(value, schemes)
            if problem:
                self.report(key, problem)
        return value

    def abs_path(self, key: str) -> Path | None:
        value = self.opt_string(key)
        if value is None:
            return None
        if not os.path.isabs(value):
            self.report(key, f"must be an absolute path, got {value!r}")
            return None
        return Path(value)

    def topic(self, key: str, default: str) -> str:
        value = self.string(key, default)
        problem = _topic_problem(value)
        if problem:
            self.report(key, problem)
        return value

    def section(self, key: str) -> _Table | None:
        value = self._typed(key, lambda v: isinstance(v, Mapping), "a table")
        return None if value is _MISSING else _Table(value, self.at(key), self.problems)

    def finish(self) -> None:
        """Report every key that nothing asked for."""
        known = sorted(self.seen)
        for key in self.data:
            if key not in self.seen:
                close = get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                self.report(key, f"unknown key{hint}")


def _secret_at(value: Any, path: str, problems: list[Problem], inline_ok: bool) -> Secret | None:
    try:
        secret = parse_secret(value, path)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    if secret.is_inline and not inline_ok:
        problems.append(Problem(path, _INLINE_REFUSED))
        return None
    return secret


def _is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in REFERENCE_KINDS


def _freeze(
    value: Any, path: str, problems: list[Problem], inline_ok: bool, secretish: bool
) -> Any:
    """Free-form plugin options: tables frozen, secret-looking keys turned into Secrets."""
    if secretish and (isinstance(value, str) or _is_reference(value)):
        return _secret_at(value, path, problems, inline_ok)
    if isinstance(value, Mapping):
        return FrozenMap(
            (k, _freeze(v, _join(path, k), problems, inline_ok, looks_secret(k)))
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return tuple(
            _freeze(v, f"{path}[{i}]", problems, inline_ok, secretish) for i, v in enumerate(value)
        )
    if value is None:
        problems.append(Problem(path, "must not be null"))
    return value


def _parse_token(session: _Table, inline_ok: bool) -> TokenConfig | None:
    table = session.section("token")
    if table is None:
        if "token" not in session.data:
            sources = ", ".join(f'"{s}"' for s in BUILTIN_TOKEN_SOURCES)
            session.report("token", f"is required: a table with source = {sources} or a plugin's")
        return None
    source = table.required_string("source")
    token: TokenConfig | None = None
    if source == "minted":
        url = table.url("url", _WS)
        api_key = table.required_string("api_key")
        secret = table.secret("api_secret", required=True, inline_ok=inline_ok)
        if secret is not None:
            token = MintedTokenConfig(url=url, api_key=api_key, api_secret=secret)
    elif source == "literal":
        server_url = table.url("server_url", _WS)
        secret = table.secret("participant_token", required=True, inline_ok=inline_ok)
        if secret is not None:
            token = LiteralTokenConfig(server_url=server_url, participant_token=secret)
    elif source == "endpoint":
        url = table.url("url", _HTTP)
        headers: dict[str, Secret] = {}
        header_table = table.section("headers") or _Table({}, "", table.problems)
        for name in header_table.data:
            if not _HEADER_NAME.fullmatch(name):
                header_table.report(name, "is not a valid HTTP header name")
            found = header_table.secret(name, required=True, inline_ok=inline_ok)
            if found is not None:
                headers[name] = found
        token = EndpointTokenConfig(url=url, headers=FrozenMap(headers))
    elif source == "development":
        sandbox_id = table.required_string("sandbox_id")
        base_url = table.url("base_url", _HTTP, DEFAULT_DEVELOPMENT_BASE_URL)
        token = DevelopmentTokenConfig(sandbox_id=sandbox_id, base_url=base_url)
    elif source:
        if not _NAME.fullmatch(source):
            table.report("source", f"{source!r} is not a valid token source name")
        options = {k: v for k, v in table.data.items() if k != "source"}
        table.seen.update(options)
        frozen = _freeze(options, table.path, table.problems, inline_ok, False)
        token = PluginTokenConfig(source=source, options=frozen)
    if source:
        table.finish()  # without a valid source, which keys belong is unknown
    return token


def _parse_transports(session: _Table, inline_ok: bool) -> FrozenMap[str, FrozenMap[str, Any]]:
    table = session.section("transports")
    if table is None:
        return FrozenMap()
    transports: dict[str, FrozenMap[str, Any]] = {}
    for name in table.data:
        options = table.section(name)
        if not _NAME.fullmatch(name):
            table.report(name, "is not a valid transport name")
        elif options is not None:
            transports[name] = _freeze(options.data, options.path, table.problems, inline_ok, False)
    return FrozenMap(transports)


def _parse_session(session_id: str, table: _Table, inline_ok: bool) -> SessionConfig | None:
    token = _parse_token(table, inline_ok)
    fields: dict[str, Any] = dict(
        agent_name=table.opt_string("agent_name"),
        agent_metadata=table.opt_string("agent_metadata", nonempty=False),
        autostart=table.boolean("autostart", True),
        agent_connect_timeout=table.positive_number("agent_connect_timeout", 20.0),
        room_name=table.opt_string("room_name"),
        participant_identity=table.opt_string("participant_identity"),
        participant_name=table.opt_string("participant_name"),
        participant_metadata=table.opt_string("participant_metadata", nonempty=False),
        participant_attributes=table.str_map("participant_attributes"),
        senders=table.names("senders", ("chat",)),
        receivers=table.names("receivers", ("chat", "transcription")),
        transports=_parse_transports(table, inline_ok),
    )
    table.finish()
    return None if token is None else SessionConfig(id=session_id, token=token, **fields)


def _parse_sessions(root: _Table, inline_ok: bool) -> dict[str, SessionConfig]:
    sessions: dict[str, SessionConfig] = {}
    table = root.section("sessions") or _Table({}, "sessions", root.problems)
    for session_id in table.data:
        section = table.section(session_id)
        valid_id = bool(SESSION_ID_PATTERN.fullmatch(session_id))
        if not valid_id:
            table.report(session_id, _BAD_SESSION_ID)
        if section is not None:
            session = _parse_session(session_id, section, inline_ok)
            if session is not None and valid_id:
                sessions[session_id] = session
    return sessions


def _parse_mqtt(table: _Table, hostname: str | None, inline_ok: bool) -> MqttConfig:
    tls_table = table.section("tls")
    tls = None
    if tls_table is not None:
        tls = TlsConfig(
            ca_file=tls_table.abs_path("ca_file"),
            cert_file=tls_table.abs_path("cert_file"),
            key_file=tls_table.abs_path("key_file"),
            insecure=tls_table.boolean("insecure", False),
        )
        if tls.key_file is not None and tls.cert_file is None:
            tls_table.report("key_file", "needs cert_file as well")
        tls_table.finish()
    protocol = MqttProtocol.V5
    raw_protocol = table.take("protocol")
    if raw_protocol in ("3.1.1", "5") or (_is_int(raw_protocol) and raw_protocol == 5):
        protocol = MqttProtocol(str(raw_protocol))
    elif raw_protocol is not _MISSING:
        table.report("protocol", f'must be "5" or "3.1.1", got {raw_protocol!r}')
    mqtt = MqttConfig(
        host=table.string("host", "127.0.0.1"),
        port=table.integer("port", 8883 if tls else 1883, 1, 65535),
        base_topic=table.topic("base_topic", "lkbridge"),
        client_id=table.string("client_id", default_client_id(hostname)),
        username=table.opt_string("username"),
        password=table.secret("password", required=False, inline_ok=inline_ok),
        protocol=protocol,
        keepalive=table.integer("keepalive", 60, 0, 65535),
        queue_limit=table.integer("queue_limit", 10_000, 0),
        max_payload_bytes=table.integer("max_payload_bytes", 65_536, 1, 268_435_455),
        tls=tls,
    )
    if mqtt.password is not None and mqtt.username is None and protocol is MqttProtocol.V311:
        table.report("password", "needs a username with MQTT 3.1.1")
    table.finish()
    return mqtt


def _default_state_directory(environ: Mapping[str, str]) -> Path:
    # systemd's StateDirectory= sets STATE_DIRECTORY (colon-separated when several).
    first = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first and os.path.isabs(first) else Path("/var/lib/lkbridge")


def _section(root: _Table, key: str) -> _Table:
    return root.section(key) or _Table({}, key, root.problems)


def config_from_dict(
    data: Mapping[str, Any],
    source_name: str = "<dict>",
    *,
    environ: Mapping[str, str] | None = None,
    hostname: str | None = None,
    resolve_secrets: bool = False,
) -> Config:
    """Validate parsed TOML data into a Config; raises ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    problems: list[Problem] = []
    root = _Table(data, "", problems)
    mqtt = _parse_mqtt(_section(root, "mqtt"), hostname, True)
    state_table = _section(root, "state")
    state = StateConfig(
        directory=state_table.abs_path("directory") or _default_state_directory(env),
        history_limit=state_table.integer("history_limit", 1000, 0, 10_000_000),
    )
    log_table = _section(root, "log")
    log = LogConfig(
        level=cast(LogLevel, log_table.choice("level", "info", _LEVELS)),
        format=cast(LogFormat, log_table.choice("format", "auto", _FORMATS)),
    )
    plugins_table = _section(root, "plugins")
    plugins = PluginsConfig(disable=plugins_table.names("disable", ()))
    ha_table = _section(root, "homeassistant")
    homeassistant = HomeAssistantConfig(
        enabled=ha_table.boolean("enabled", True),
        discovery_prefix=ha_table.topic("discovery_prefix", "homeassistant"),
    )
    sessions = _parse_sessions(root, True)
    for table in (state_table, log_table, plugins_table, ha_table, root):
        table.finish()
    if problems:
        raise ConfigError(problems, source=source_name)
    config = Config(
        mqtt=mqtt,
        state=state,
        log=log,
        plugins=plugins,
        homeassistant=homeassistant,
        sessions=FrozenMap(sessions),
        source=source_name,
    )
    if resolve_secrets:
        secret_problems = config.secret_problems(env)
        if secret_problems:
            raise ConfigError(secret_problems, source=source_name)
    return config


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


def session_from_table(
    session_id: str, table: Mapping[str, Any], *, allow_inline_secrets: bool = False
) -> SessionConfig:
    """Validate one session's table (e.g. JSON from session/add); paths read sessions.<id>….

    Inline secrets are refused by default: lkbridge never stores a secret in plain text, so a
    session added at runtime must reference its secrets by env, file or credential.
    """
    problems: list[Problem] = []
    path = _join("sessions", session_id)
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        problems.append(Problem(path, _BAD_SESSION_ID))
    if not isinstance(table, Mapping):
        problems.append(Problem(path, f"expected a table, got {_type_name(table)}"))
        raise ConfigError(problems)
    session = _parse_session(session_id, _Table(table, path, problems), allow_inline_secrets)
    if problems or session is None:
        raise ConfigError(problems)
    return session


def session_to_table(session: SessionConfig) -> dict[str, Any]:
    """The session as a TOML-able table; raises ConfigError if it holds an inline secret."""
    return session.to_table()


def load_overrides(path: str | os.PathLike[str]) -> Overrides:
    """Read the runtime overrides file; a missing file means no overrides."""
    file = Path(path)
    if not file.exists():
        return Overrides()
    data = _loads(_read(file), str(file))
    problems: list[Problem] = []
    root = _Table(data, "", problems)
    removed = root.names("removed", ())
    sessions = _parse_sessions(root, False)
    root.finish()
    if problems:
        raise ConfigError(problems, source=str(file))
    return Overrides(FrozenMap(sessions), frozenset(removed))


def write_overrides(
    path: str | os.PathLike[str],
    sessions: Mapping[str, SessionConfig] | Iterable[SessionConfig],
    removed: Iterable[str] = (),
) -> None:
    """Atomically write the overrides file; raises ConfigError if a session has an inline secret."""
    items = list(sessions.values() if isinstance(sessions, Mapping) else sessions)
    problems: list[Problem] = []
    tables: dict[str, Any] = {}
    for session in items:
        try:
            tables[session.id] = session.to_table()
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems, source=str(path))
    data: dict[str, Any] = {"removed": sorted(set(removed)), "sessions": tables}
    header = (
        "# Written by lkbridge: sessions added or removed at runtime over MQTT.\n"
        "# These win over the main config file, per session id. Secrets appear only as\n"
        "# references. Edit only while lkbridge is stopped.\n\n"
    )
    _write_atomically(Path(path), header + tomli_w.dumps(data), mode=0o600)


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
# Every key is documented in config.example.toml and docs/configuration.md.
# Check it with: lkbridge check -c THIS_FILE
#
# The demo session mints tokens for a local LiveKit server (`livekit-server --dev` uses the
# API key "devkey"); its secret is read from the LIVEKIT_API_SECRET environment variable.
# Set agent_name to the name your agent worker registers with.

"""


def write_starter_config(path: str | os.PathLike[str]) -> None:
    """Write a valid starter config; refuses (ConfigError) to overwrite an existing file."""
    file = Path(path)
    data = {
        "mqtt": {"host": "127.0.0.1", "port": 1883, "base_topic": "lkbridge"},
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
        with open(file, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError as exc:
        message = "already exists; refusing to overwrite it (choose another path or remove it)"
        raise ConfigError([Problem(str(file), message)], str(file)) from exc
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError([Problem(str(file), f"cannot be written: {reason}")], str(file)) from exc


def unknown_name_problems(
    config: Config,
    *,
    senders: Collection[str],
    receivers: Collection[str],
    token_sources: Collection[str],
) -> list[Problem]:
    """Problems for transport and token source names no plugin provides (checked after loading)."""
    problems: list[Problem] = []
    known_sources = [*BUILTIN_TOKEN_SOURCES, *token_sources]

    def check(path: str, name: str, known: Collection[str], what: str) -> None:
        if name not in known:
            close = get_close_matches(name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listed = ", ".join(sorted(known)) or "none"
            problems.append(Problem(path, f"unknown {what} {name!r}{hint}; known: {listed}"))

    for session_id, session in config.sessions.items():
        path = _join("sessions", session_id)
        for index, name in enumerate(session.senders):
            check(f"{path}.senders[{index}]", name, senders, "sender")
        for index, name in enumerate(session.receivers):
            check(f"{path}.receivers[{index}]", name, receivers, "receiver")
        check(f"{path}.token.source", session.token.source, known_sources, "token source")
    return problems
