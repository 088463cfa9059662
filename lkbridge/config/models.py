"""Frozen, typed configuration models, their plain (TOML/JSON) forms, and config diffs."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from lkbridge.config.secrets import Secret, SecretError
from lkbridge.errors import redact_url
from lkbridge.tokens.sources import DEVELOPMENT_BASE_URL

__all__ = [
    "DEFAULT_DEVELOPMENT_BASE_URL",
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
    "LogFormat",
    "LogLevel",
    "MintedTokenConfig",
    "MqttConfig",
    "MqttProtocol",
    "Overrides",
    "PluginTokenConfig",
    "PluginsConfig",
    "Problem",
    "RuntimeSession",
    "SessionConfig",
    "StateConfig",
    "TlsConfig",
    "TokenConfig",
    "WyomingConfig",
    "default_client_id",
    "diff_configs",
]

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_DEVELOPMENT_BASE_URL = DEVELOPMENT_BASE_URL


class FrozenMap(Mapping[K, V]):
    """An immutable, hashable mapping (insertion-ordered) used inside the frozen models."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._data: dict[K, V] = dict(data)
        self._hash: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(frozenset(self._data.items()))
        return self._hash

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration, at a TOML path."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """The configuration is invalid; carries every problem found, one per line in str()."""

    def __init__(self, problems: Iterable[Problem], source: str | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source = source
        super().__init__("\n".join(str(p) for p in self.problems))


class MqttProtocol(StrEnum):
    """MQTT protocol version spoken to the broker."""

    V5 = "5"
    V311 = "3.1.1"


def default_client_id(hostname: str | None = None) -> str:
    """The default MQTT client id: lkbridge-<hostname>."""
    return f"lkbridge-{hostname or socket.gethostname()}"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """[mqtt.tls]: TLS to the broker (present means enabled)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """[mqtt]: the broker connection and topic layout."""

    host: str = "127.0.0.1"
    port: int = 1883
    base_topic: str = "lkbridge"
    client_id: str = field(default_factory=default_client_id)
    username: str | None = None
    password: Secret | None = None
    protocol: MqttProtocol = MqttProtocol.V5
    keepalive: int = 60
    queue_limit: int = 10_000
    max_payload_bytes: int = 65_536
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class StateConfig:
    """[state]: where history and runtime overrides live."""

    directory: Path = Path("/var/lib/lkbridge")
    history_limit: int = 1000


LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]


@dataclass(frozen=True, slots=True)
class LogConfig:
    """[log]: level and output format."""

    level: LogLevel = "info"
    format: LogFormat = "auto"


@dataclass(frozen=True, slots=True)
class PluginsConfig:
    """[plugins]: plugin names not to load; whether the daemon may run without any bridge."""

    disable: tuple[str, ...] = ()
    allow_no_bridge: bool = False


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    """[homeassistant]: MQTT discovery."""

    enabled: bool = True
    discovery_prefix: str = "homeassistant"
    name: str | None = None  # the bridge device's name; session devices are "<name> <id>"


ALL_ACTIONS: tuple[str, ...] = (
    "session/start",
    "session/end",
    "session/send",
    "session/history",
    "session/restore",
    "session/dismiss_error",
    "session/add",
    "session/remove",
    "config/reload",
    "health_check",
)
"""Every request action of the MQTT API (`{base}/bridge/request/<action>`)."""
ALWAYS_ALLOWED: tuple[str, ...] = ("health_check", "session/history")
"""Reads that [control] actions cannot turn off."""


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """[control]: what a broker client may do over MQTT, and the limits on it."""

    runtime_sessions: bool = True
    """Whether session/add (from templates only) and session/remove work at all."""
    remove_configured: bool = False
    """Whether session/remove may remove (or replace) sessions of the config file."""
    actions: tuple[str, ...] = ALL_ACTIONS
    """Request actions MQTT may call (health_check and session/history always work)."""
    max_sessions: int = 100
    max_requests_in_flight: int = 1000
    requests_per_second: float = 1000.0
    request_burst: int = 2000

    def allows(self, action: str) -> bool:
        return action in ALWAYS_ALLOWED or action in self.actions


@dataclass(frozen=True, slots=True)
class MintedTokenConfig:
    """source = "minted": tokens minted locally from an API key and secret."""

    source: ClassVar[str] = "minted"
    url: str
    api_key: str
    api_secret: Secret


@dataclass(frozen=True, slots=True)
class LiteralTokenConfig:
    """source = "literal": a fixed server URL and participant token."""

    source: ClassVar[str] = "literal"
    server_url: str
    participant_token: Secret


@dataclass(frozen=True, slots=True)
class EndpointTokenConfig:
    """source = "endpoint": the standard token-endpoint protocol; header values are secrets."""

    source: ClassVar[str] = "endpoint"
    url: str
    headers: FrozenMap[str, Secret] = field(default_factory=FrozenMap)


@dataclass(frozen=True, slots=True)
class DevelopmentTokenConfig:
    """source = "development": LiveKit's sandbox token server."""

    source: ClassVar[str] = "development"
    sandbox_id: str
    base_url: str = DEFAULT_DEVELOPMENT_BASE_URL


@dataclass(frozen=True, slots=True)
class PluginTokenConfig:
    """source = <plugin name>: the other keys are the plugin's options (secret-ish ones Secret)."""

    source: str
    options: FrozenMap[str, Any] = field(default_factory=FrozenMap)


TokenConfig = (
    MintedTokenConfig
    | LiteralTokenConfig
    | EndpointTokenConfig
    | DevelopmentTokenConfig
    | PluginTokenConfig
)


@dataclass(frozen=True, slots=True)
class WyomingConfig:
    """[sessions.<id>.wyoming]: the session as a Wyoming `handle` service (Home Assistant Assist)."""

    port: int
    host: str = "127.0.0.1"
    name: str | None = None
    languages: tuple[str, ...] = ()
    answer_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 8
    max_waiting: int = 4
    max_text_length: int = 2000
    zeroconf: bool = False


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """[sessions.<id>]: one agent session."""

    id: str
    token: TokenConfig
    agent_name: str | None = None
    agent_metadata: str | None = None
    autostart: bool = True
    agent_connect_timeout: float = 20.0
    reply_timeout: float = 60.0
    """Seconds a sent message waits for its final reply before an `unanswered` event; 0: off."""
    restart_on_agent_leave: bool = True
    """Whether the session restarts (in a new room) when its agent leaves on its own."""
    room_name: str | None = None
    participant_identity: str | None = None
    participant_name: str | None = None
    participant_metadata: str | None = None
    participant_attributes: FrozenMap[str, str] = field(default_factory=FrozenMap)
    senders: tuple[str, ...] = ("chat",)
    receivers: tuple[str, ...] = ("chat", "transcription")
    transports: FrozenMap[str, FrozenMap[str, Any]] = field(default_factory=FrozenMap)
    wyoming: WyomingConfig | None = None

    def to_table(self) -> dict[str, Any]:
        """The TOML-able table (without the id); raises ConfigError if a secret is inline."""
        refused: list[Problem] = []
        table = _plain_dict(self, redact=False, refused=refused)
        if refused:
            raise ConfigError(refused)
        del table["id"]
        return table

    def redacted(self) -> dict[str, Any]:
        """JSON-able form with every secret shown as "***" or its reference."""
        return _plain_dict(self, redact=True)

    def secrets(self) -> Iterator[Secret]:
        """Every Secret in this session's configuration."""
        return _secrets_in(self)


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
class Config:
    """The whole daemon configuration."""

    mqtt: MqttConfig = field(default_factory=MqttConfig)
    state: StateConfig = field(default_factory=StateConfig)
    log: LogConfig = field(default_factory=LogConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    templates: FrozenMap[str, SessionConfig] = field(default_factory=FrozenMap)
    sessions: FrozenMap[str, SessionConfig] = field(default_factory=FrozenMap)
    source: str = field(default="<string>", compare=False)

    def redacted(self) -> dict[str, Any]:
        """The effective configuration as JSON-able data, every secret "***" or its reference."""
        data = _plain_dict(self, redact=True)
        del data["source"]
        return data

    def secrets(self) -> Iterator[Secret]:
        """Every Secret in the configuration."""
        return _secrets_in(self)

    def secret_problems(self, environ: Mapping[str, str] | None = None) -> list[Problem]:
        """Resolve every secret now; one Problem per secret that cannot be resolved."""
        problems: list[Problem] = []
        for secret in self.secrets():
            try:
                secret.reveal(environ)
            except SecretError as exc:
                problems.append(Problem(exc.path, exc.message))
        return problems

    def with_sessions(self, sessions: Iterable[SessionConfig]) -> Config:
        """A copy with these sessions (keyed by their ids) instead of the current ones."""
        return dataclasses.replace(self, sessions=FrozenMap((s.id, s) for s in sessions))


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


@dataclass(frozen=True, slots=True)
class ConfigDiff:
    """What a reload changes: session ids by fate, and other top-level sections that differ."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()

    @property
    def sessions_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """Compare two configs by value (secrets compare by their reference or inline value)."""
    old_s, new_s = old.sessions, new.sessions
    sections = tuple(
        f.name
        for f in dataclasses.fields(Config)
        if f.compare
        and f.name not in ("sessions", "templates")  # templates reach sessions through apply()
        and getattr(old, f.name) != getattr(new, f.name)
    )
    return ConfigDiff(
        added=tuple(k for k in new_s if k not in old_s),
        removed=tuple(k for k in old_s if k not in new_s),
        changed=tuple(k for k in new_s if k in old_s and new_s[k] != old_s[k]),
        unchanged=tuple(k for k in new_s if k in old_s and new_s[k] == old_s[k]),
        sections=sections,
    )


_INLINE_REFUSED = (
    "an inline secret cannot be stored by lkbridge; give it as a reference:"
    ' { env = "NAME" }, { file = "/path" } or { credential = "NAME" }'
)


def _plain(obj: Any, *, redact: bool, refused: list[Problem] | None = None) -> Any:
    """Models to plain data: JSON-able when redact, else TOML-able (None dropped, refs only)."""
    if isinstance(obj, Secret):
        if redact:
            return obj.redacted()
        reference = obj.reference()
        if reference is None:
            if refused is not None:
                refused.append(Problem(obj.path, _INLINE_REFUSED))
            return "***"
        return reference
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        if isinstance(obj, PluginTokenConfig):
            out["source"] = obj.source
            out.update(_plain(obj.options, redact=redact, refused=refused))
            return out
        source = getattr(type(obj), "source", None)
        if isinstance(source, str):
            out["source"] = source
        for f in dataclasses.fields(obj):
            value = _plain(getattr(obj, f.name), redact=redact, refused=refused)
            if value is not None or redact:
                out[f.name] = value
        return out
    if isinstance(obj, Mapping):
        return {str(k): _plain(v, redact=redact, refused=refused) for k, v in obj.items()}
    if isinstance(obj, list | tuple | frozenset | set):
        items = sorted(obj) if isinstance(obj, frozenset | set) else obj
        return [_plain(v, redact=redact, refused=refused) for v in items]
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if redact and isinstance(obj, datetime | date | time):
        return obj.isoformat()
    if redact and isinstance(obj, str) and "://" in obj:
        # A URL may carry credentials (user:password@, ?api_key=…): publish it without them.
        return redact_url(obj)
    return obj


def _plain_dict(obj: Any, *, redact: bool, refused: list[Problem] | None = None) -> dict[str, Any]:
    data = _plain(obj, redact=redact, refused=refused)
    assert isinstance(data, dict)
    return data


def _secrets_in(obj: Any) -> Iterator[Secret]:
    if isinstance(obj, Secret):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _secrets_in(getattr(obj, f.name))
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _secrets_in(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _secrets_in(value)
