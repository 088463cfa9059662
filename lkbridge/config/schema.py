"""The config schema: plain data (parsed TOML, or JSON) validated into the frozen models."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Collection, Mapping, Sequence
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Final, cast

from lkbridge.config.address import mqtt_address
from lkbridge.config.models import (
    ALL_ACTIONS,
    DEFAULT_DEVELOPMENT_BASE_URL,
    MAX_AGENT_METADATA,
    MAX_AGENT_NAME,
    Config,
    ConfigError,
    ControlConfig,
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
    RuntimeSession,
    SessionConfig,
    StateConfig,
    TlsConfig,
    TokenConfig,
    WyomingConfig,
    default_client_id,
)
from lkbridge.config.reader import (
    MISSING,
    NAME,
    KeyHomes,
    TableReader,
    freeze,
    is_int,
    join_path,
    type_name,
)
from lkbridge.config.secrets import Secret
from lkbridge.mqtt.types import filters_overlap

__all__ = [
    "BUILTIN_TOKEN_SOURCES",
    "MAX_AGENT_CONNECT_TIMEOUT",
    "SESSION_ID_PATTERN",
    "bridge_subscriptions",
    "config_from_dict",
    "overrides_from_dict",
    "runtime_session",
    "session_from_table",
    "unknown_name_problems",
    "unknown_names_in_data",
]

SESSION_ID_PATTERN: Final = re.compile(r"[a-z0-9_-]{1,64}")
BUILTIN_TOKEN_SOURCES: Final = ("minted", "literal", "endpoint", "development")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_WS = ("ws", "wss", "http", "https")
_HTTP = ("http", "https")
_BAD_SESSION_ID = "session id must be 1 to 64 characters from a-z, 0-9, _ and -"
RESERVED_SESSION_IDS: Final = frozenset({"bridge"})
_RESERVED_SESSION_ID = "session id 'bridge' is reserved (it would collide with {base}/bridge/...)"


def session_id_problem(session_id: str) -> str | None:
    """Why session_id cannot be used, or None."""
    if not SESSION_ID_PATTERN.fullmatch(session_id):
        return _BAD_SESSION_ID
    if session_id in RESERVED_SESSION_IDS:
        return _RESERVED_SESSION_ID
    return None


MAX_AGENT_CONNECT_TIMEOUT: Final = 3600.0
"""Seconds; a larger agent_connect_timeout is refused (a send could wait that long)."""
_AGENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def bridge_subscriptions(base: str, discovery_prefix: str, homeassistant: bool) -> list[str]:
    """The topic filters the MQTT bridge subscribes to (one definition, used by Topics too)."""
    # Actions contain a slash (session/start), so requests need a multi-level wildcard.
    filters = [f"{base}/bridge/request/#", f"{base}/+/send", f"{base}/+/command"]
    if homeassistant:
        filters.append(f"{discovery_prefix}/status")
    return filters


_LEVELS: Final = ("debug", "info", "warning", "error")
_FORMATS: Final = ("auto", "json", "console")


def _parse_token(session: TableReader, inline_ok: bool) -> TokenConfig | None:
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
        header_table = table.section("headers") or TableReader({}, "", table.problems)
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
        if not NAME.fullmatch(source):
            table.report("source", f"{source!r} is not a valid token source name")
        options = {k: v for k, v in table.data.items() if k != "source"}
        table.seen.update(options)
        frozen = freeze(options, table.path, table.problems, inline_ok, False)
        token = PluginTokenConfig(source=source, options=frozen)
    if source:
        table.finish()  # without a valid source, which keys belong is unknown
    return token


def _parse_transports(session: TableReader, inline_ok: bool) -> FrozenMap[str, FrozenMap[str, Any]]:
    table = session.section("transports")
    if table is None:
        return FrozenMap()
    transports: dict[str, FrozenMap[str, Any]] = {}
    for name in table.data:
        options = table.section(name)
        if not NAME.fullmatch(name):
            table.report(name, "is not a valid transport name")
        elif options is not None:
            transports[name] = freeze(options.data, options.path, table.problems, inline_ok, False)
    return FrozenMap(transports)


_LANGUAGE = re.compile(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]{1,8})*")


def _parse_wyoming(session: TableReader, inline_ok: bool) -> WyomingConfig | None:
    table = session.section("wyoming")
    if table is None:
        return None
    if not inline_ok:
        # A listening socket is the operator's decision, never a broker client's.
        session.report("wyoming", "can only be set in the configuration file, not at runtime")
        return None
    port = table.integer("port", 0, 1, 65535)
    if "port" not in table.data:
        table.report("port", "is required (the TCP port Home Assistant connects to)")
    languages = table._typed("languages", lambda v: isinstance(v, list), "an array of strings")
    langs: list[str] = []
    for index, item in enumerate([] if languages is MISSING else languages):
        if not isinstance(item, str) or not _LANGUAGE.fullmatch(item):
            shown = repr(item) if isinstance(item, str) else type_name(item)
            table.problems.append(
                Problem(
                    f"{table.at('languages')}[{index}]",
                    f"must be a language code like en or en-US, got {shown}",
                )
            )
        elif item not in langs:
            langs.append(item)
    wyoming = WyomingConfig(
        port=port,
        host=table.string("host", "127.0.0.1"),
        name=table.opt_string("name"),
        languages=tuple(langs),
        answer_timeout=table.positive_number("answer_timeout", 30.0),
        idle_timeout=table.positive_number("idle_timeout", 60.0),
        max_connections=table.integer("max_connections", 8, 1, 1000),
        max_waiting=table.integer("max_waiting", 4, 1, 1000),
        max_text_length=table.integer("max_text_length", 2000, 1, 60_000),
        zeroconf=table.boolean("zeroconf", False),
    )
    table.finish()
    return wyoming


def _check_wyoming_ports(sessions: Mapping[str, SessionConfig], problems: list[Problem]) -> None:
    """Two sessions cannot listen on the same port (a wildcard host overlaps every host)."""
    taken: dict[int, list[tuple[str, str]]] = {}
    for session_id, session in sessions.items():
        if session.wyoming is None:
            continue
        host, port = session.wyoming.host, session.wyoming.port
        for other_id, other_host in taken.get(port, []):
            if host == other_host or "0.0.0.0" in (host, other_host) or "::" in (host, other_host):
                problems.append(Problem(
                    f"sessions.{session_id}.wyoming.port",
                    f"port {port} is already used by sessions.{other_id}.wyoming",
                ))  # fmt: skip
                break
        taken.setdefault(port, []).append((session_id, host))


def _parse_session(session_id: str, table: TableReader, inline_ok: bool) -> SessionConfig | None:
    token = _parse_token(table, inline_ok)
    fields: dict[str, Any] = dict(
        agent_name=table.opt_string("agent_name"),
        agent_metadata=table.opt_string("agent_metadata", nonempty=False),
        autostart=table.boolean("autostart", True),
        agent_connect_timeout=table.positive_number(
            "agent_connect_timeout", 20.0, MAX_AGENT_CONNECT_TIMEOUT
        ),
        reply_timeout=table.number("reply_timeout", 60.0, 0.0, 3600.0),
        restart_on_agent_leave=table.boolean("restart_on_agent_leave", True),
        room_name=table.opt_string("room_name"),
        participant_identity=table.opt_string("participant_identity"),
        participant_name=table.opt_string("participant_name"),
        participant_metadata=table.opt_string("participant_metadata", nonempty=False),
        participant_attributes=table.str_map("participant_attributes"),
        senders=table.names("senders", ("chat",)),
        receivers=table.names("receivers", ("chat", "transcription")),
        transports=_parse_transports(table, inline_ok),
        wyoming=_parse_wyoming(table, inline_ok),
    )
    table.finish()
    return None if token is None else SessionConfig(id=session_id, token=token, **fields)


def _parse_sessions(root: TableReader, inline_ok: bool) -> dict[str, SessionConfig]:
    sessions: dict[str, SessionConfig] = {}
    table = root.section("sessions") or TableReader({}, "sessions", root.problems)
    for session_id in table.data:
        section = table.section(session_id)
        id_problem = session_id_problem(session_id)
        valid_id = id_problem is None
        if id_problem is not None:
            table.report(session_id, id_problem)
        if section is not None:
            session = _parse_session(session_id, section, inline_ok)
            if session is not None and valid_id:
                sessions[session_id] = session
    return sessions


def _parse_templates(root: TableReader) -> dict[str, SessionConfig]:
    """[templates.NAME]: sessions that session/add may instantiate (a session table each)."""
    templates: dict[str, SessionConfig] = {}
    table = root.section("templates") or TableReader({}, "templates", root.problems)
    for name in table.data:
        section = table.section(name)
        if not SESSION_ID_PATTERN.fullmatch(name):
            table.report(name, "template name must be 1 to 64 characters from a-z, 0-9, _ and -")
        elif section is not None:
            template = _parse_session(name, section, True)
            if template is not None and template.wyoming is not None:
                # Every session made from it would want the same port.
                section.report("wyoming", "cannot be in a template; give a session its own in"
                               " [sessions.<id>.wyoming]")  # fmt: skip
            elif template is not None:
                templates[name] = template
    return templates


def _parse_control(table: TableReader) -> ControlConfig:
    actions = ALL_ACTIONS
    raw = table.take("actions")
    if raw is not MISSING:
        if not isinstance(raw, list):
            table.report("actions", f"expected an array of action names, got {type_name(raw)}")
        else:
            chosen: list[str] = []
            for index, item in enumerate(raw):
                if item not in ALL_ACTIONS:
                    shown = repr(item) if isinstance(item, str) else type_name(item)
                    known = ", ".join(ALL_ACTIONS)
                    table.problems.append(
                        Problem(f"{table.at('actions')}[{index}]",
                                f"unknown action {shown}; known: {known}")
                    )
                elif item not in chosen:
                    chosen.append(item)
            actions = tuple(chosen)
    control = ControlConfig(
        runtime_sessions=table.boolean("runtime_sessions", True),
        remove_configured=table.boolean("remove_configured", False),
        actions=actions,
        max_sessions=table.integer("max_sessions", 100, 1, 10_000),
        max_requests_in_flight=table.integer("max_requests_in_flight", 1000, 1, 100_000),
        requests_per_second=table.positive_number("requests_per_second", 1000.0, 100_000.0),
        request_burst=table.integer("request_burst", 2000, 1, 1_000_000),
    )
    table.finish()
    return control


def _topic_problems(
    sessions: Mapping[str, SessionConfig], where: str, reserved: list[str]
) -> list[Problem]:
    """The mqtt transport may not subscribe or publish to the bridge's own topics."""
    problems: list[Problem] = []
    for sid, session in sessions.items():
        options = session.transports.get("mqtt")
        if options is None:
            continue
        for key in ("subscribe_topic", "publish_topic"):
            value = options.get(key)
            if not isinstance(value, str) or not value:
                continue
            own = next((f for f in reserved if filters_overlap(value, f)), None)
            if own is not None:
                problems.append(Problem(
                    f"{where}.{sid}.transports.mqtt.{key}",
                    f"{value!r} overlaps the bridge's own topics ({own}); the bridge would lose"
                    " (or answer) its own commands — choose a topic outside them",
                ))
    return problems


def _parse_mqtt(table: TableReader, hostname: str | None, inline_ok: bool) -> MqttConfig:
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
    if raw_protocol in ("3.1.1", "5") or (is_int(raw_protocol) and raw_protocol == 5):
        protocol = MqttProtocol(str(raw_protocol))
    elif raw_protocol is not MISSING:
        table.report("protocol", f'must be "5" or "3.1.1", got {raw_protocol!r}')
    host, port, tls = mqtt_address(table, tls)
    mqtt = MqttConfig(
        host=host,
        port=port,
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


def _section(root: TableReader, key: str) -> TableReader:
    return root.section(key) or TableReader({}, key, root.problems)


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
    root = TableReader(data, "", problems, homes=key_homes())
    config = _read_config(root, env, hostname, source_name)
    if problems:
        raise ConfigError(problems, source=source_name)
    if resolve_secrets:
        secret_problems = config.secret_problems(env)
        if secret_problems:
            raise ConfigError(secret_problems, source=source_name)
    return config


@functools.cache
def key_homes() -> KeyHomes:
    """Every table's keys, learnt by reading an empty config with each built-in token source."""
    homes = KeyHomes()
    for source in BUILTIN_TOKEN_SOURCES:
        data = {"mqtt": {"tls": {}}, "state": {}, "log": {}, "plugins": {}, "homeassistant": {},
                "control": {}, "sessions": {"name": {"token": {"source": source}}}}
        _read_config(TableReader(data, "", [], learn=homes), {}, "host", "<schema>")
    return homes


def _read_config(
    root: TableReader, env: Mapping[str, str], hostname: str | None, source_name: str
) -> Config:
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
    plugins = PluginsConfig(
        disable=plugins_table.names("disable", ()),
        allow_no_bridge=plugins_table.boolean("allow_no_bridge", False),
    )
    ha_table = _section(root, "homeassistant")
    homeassistant = HomeAssistantConfig(
        enabled=ha_table.boolean("enabled", True),
        discovery_prefix=ha_table.topic("discovery_prefix", "homeassistant"),
        name=ha_table.opt_string("name"),
    )
    control = _parse_control(_section(root, "control"))
    templates = _parse_templates(root)
    sessions = _parse_sessions(root, True)
    _check_wyoming_ports(sessions, root.problems)
    reserved = bridge_subscriptions(
        mqtt.base_topic, homeassistant.discovery_prefix, homeassistant.enabled
    )
    root.problems.extend(_topic_problems(sessions, "sessions", reserved))
    root.problems.extend(_topic_problems(templates, "templates", reserved))
    for table in (state_table, log_table, plugins_table, ha_table, root):
        table.finish()
    return Config(
        mqtt=mqtt,
        state=state,
        log=log,
        plugins=plugins,
        homeassistant=homeassistant,
        control=control,
        templates=FrozenMap(templates),
        sessions=FrozenMap(sessions),
        source=source_name,
    )


def session_from_table(
    session_id: str, table: Mapping[str, Any], *, allow_inline_secrets: bool = False
) -> SessionConfig:
    """Validate one session's table (e.g. JSON from session/add); paths read sessions.<id>….

    Inline secrets are refused by default: lkbridge never stores a secret in plain text, so a
    session added at runtime must reference its secrets by env, file or credential.
    """
    problems: list[Problem] = []
    path = join_path("sessions", session_id)
    id_problem = session_id_problem(session_id)
    if id_problem is not None:
        problems.append(Problem(path, id_problem))
    if not isinstance(table, Mapping):
        problems.append(Problem(path, f"expected a table, got {type_name(table)}"))
        raise ConfigError(problems)
    reader = TableReader(table, path, problems, homes=key_homes())
    session = _parse_session(session_id, reader, allow_inline_secrets)
    if problems or session is None:
        raise ConfigError(problems)
    return session


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
