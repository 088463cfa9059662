"""Config parsing, validation errors, secrets, overrides, starter config and diffs."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import pickle
import re
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from lkbridge.config.files import (
    OVERRIDES_FILE,
    Config,
    ConfigError,
    ControlConfig,
    DevelopmentTokenConfig,
    EndpointTokenConfig,
    FrozenMap,
    LiteralTokenConfig,
    MintedTokenConfig,
    MqttProtocol,
    Overrides,
    PluginTokenConfig,
    Problem,
    Secret,
    SecretError,
    SecretKind,
    SessionConfig,
    config_from_dict,
    diff_configs,
    load_config,
    load_effective_config,
    load_overrides,
    parse_config,
    runtime_session,
    session_from_table,
    session_to_table,
    unknown_name_problems,
    write_overrides,
    write_starter_config,
)
from lkbridge.config.models import (
    HomeAssistantConfig,
    LogConfig,
    MqttConfig,
    PluginsConfig,
    StateConfig,
    TlsConfig,
    WyomingConfig,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.toml"

MINTED = """
[sessions.kitchen.token]
source = "minted"
url = "ws://127.0.0.1:7880"
api_key = "devkey"
api_secret = { env = "LIVEKIT_API_SECRET" }
"""


def parse(text: str, **kwargs: Any) -> Config:
    kwargs.setdefault("environ", {})
    kwargs.setdefault("hostname", "testhost")
    return parse_config(textwrap.dedent(text), "test.toml", **kwargs)


def problems_of(text: str, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, **kwargs)
    return [str(p) for p in info.value.problems]


def one_problem(text: str, **kwargs: Any) -> str:
    problems = problems_of(text, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def minted(**extra: Any) -> dict[str, Any]:
    token = {
        "source": "minted",
        "url": "ws://127.0.0.1:7880",
        "api_key": "devkey",
        "api_secret": {"env": "LIVEKIT_API_SECRET"},
    }
    return {"token": token, **extra}


# -- defaults and the full schema -----------------------------------------------------------------


def test_empty_config_has_documented_defaults() -> None:
    config = parse("")
    assert config.mqtt == MqttConfig(client_id="lkbridge-testhost")
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.base_topic == "lkbridge"
    assert config.mqtt.protocol is MqttProtocol.V5
    assert (config.mqtt.keepalive, config.mqtt.queue_limit) == (60, 10_000)
    assert config.mqtt.max_payload_bytes == 65_536
    assert config.mqtt.tls is None and config.mqtt.password is None
    assert config.state == StateConfig(Path("/var/lib/lkbridge"), 1000)
    assert config.log == LogConfig("info", "auto")
    assert config.plugins == PluginsConfig((), allow_no_bridge=False)
    assert config.homeassistant == HomeAssistantConfig(True, "homeassistant")
    assert config.sessions == {}
    assert config.source == "test.toml"


def test_client_id_defaults_to_the_real_hostname() -> None:
    import socket

    config = parse_config("", environ={})
    assert config.mqtt.client_id == f"lkbridge-{socket.gethostname()}"


def test_session_defaults() -> None:
    session = parse(MINTED).sessions["kitchen"]
    assert session.id == "kitchen"
    assert session.autostart is True
    assert session.agent_connect_timeout == 20.0
    assert session.senders == ("chat",)
    assert session.receivers == ("chat", "transcription")
    assert session.agent_name is None and session.room_name is None
    assert session.participant_attributes == {} and session.transports == {}
    assert session.token == MintedTokenConfig(
        url="ws://127.0.0.1:7880", api_key="devkey", api_secret=Secret.env("LIVEKIT_API_SECRET")
    )


def test_every_key_is_parsed() -> None:
    config = parse(
        """
        [mqtt]
        host = "broker.lan"
        base_topic = "home/lkbridge"
        client_id = "me"
        username = "user"
        password = "pw-inline"
        protocol = "3.1.1"
        keepalive = 30
        queue_limit = 5
        max_payload_bytes = 1024
        [mqtt.tls]
        ca_file = "/etc/ca.pem"
        cert_file = "/etc/c.pem"
        key_file = "/etc/k.pem"
        insecure = true
        [state]
        directory = "/srv/lk"
        history_limit = 7
        [log]
        level = "debug"
        format = "json"
        [plugins]
        disable = ["mqtt", "x.y"]
        [homeassistant]
        enabled = false
        discovery_prefix = "ha"
        [sessions.s1]
        agent_name = "a"
        agent_metadata = "m"
        autostart = false
        agent_connect_timeout = 2.5
        room_name = "r"
        participant_identity = "i"
        participant_name = "n"
        participant_metadata = "pm"
        participant_attributes = { k = "v" }
        senders = []
        receivers = ["transcription"]
        [sessions.s1.transports.transcription]
        flag = true
        nested = { depth = [1, 2] }
        [sessions.s1.token]
        source = "literal"
        server_url = "wss://lk.example.com"
        participant_token = { file = "/run/token" }
        """
    )
    mqtt = config.mqtt
    assert mqtt.port == 8883  # TLS present and no port given
    assert mqtt.tls == TlsConfig(Path("/etc/ca.pem"), Path("/etc/c.pem"), Path("/etc/k.pem"), True)
    assert (mqtt.host, mqtt.base_topic, mqtt.client_id, mqtt.username) == (
        "broker.lan",
        "home/lkbridge",
        "me",
        "user",
    )
    assert mqtt.password == Secret.inline("pw-inline")
    assert mqtt.protocol is MqttProtocol.V311
    assert (mqtt.keepalive, mqtt.queue_limit, mqtt.max_payload_bytes) == (30, 5, 1024)
    assert config.state == StateConfig(Path("/srv/lk"), 7)
    assert config.log == LogConfig("debug", "json")
    assert config.plugins.disable == ("mqtt", "x.y")
    assert config.homeassistant == HomeAssistantConfig(False, "ha")
    s1 = config.sessions["s1"]
    assert s1 == SessionConfig(
        id="s1",
        token=LiteralTokenConfig("wss://lk.example.com", Secret.file("/run/token")),
        agent_name="a",
        agent_metadata="m",
        autostart=False,
        agent_connect_timeout=2.5,
        room_name="r",
        participant_identity="i",
        participant_name="n",
        participant_metadata="pm",
        participant_attributes=FrozenMap({"k": "v"}),
        senders=(),
        receivers=("transcription",),
        transports=FrozenMap(
            {"transcription": FrozenMap({"flag": True, "nested": FrozenMap({"depth": (1, 2)})})}
        ),
    )
    hash(config)  # frozen all the way down


def test_models_are_frozen() -> None:
    config = parse(MINTED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mqtt.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.sessions["x"] = config.sessions["kitchen"]  # type: ignore[index]


def test_explicit_port_wins_over_tls_default() -> None:
    config = parse("[mqtt]\nport = 8884\n[mqtt.tls]\n")
    assert config.mqtt.port == 8884 and config.mqtt.tls == TlsConfig()


@pytest.mark.parametrize(
    ("value", "expected"),
    [('"5"', MqttProtocol.V5), ("5", MqttProtocol.V5), ('"3.1.1"', MqttProtocol.V311)],
)
def test_protocol_accepts_5_and_311(value: str, expected: MqttProtocol) -> None:
    assert parse(f"[mqtt]\nprotocol = {value}\n").mqtt.protocol is expected


@pytest.mark.parametrize("value", ["3", '"3"', "5.0", '"v5"', "true"])
def test_protocol_rejects_others(value: str) -> None:
    assert one_problem(f"[mqtt]\nprotocol = {value}\n").startswith(
        'mqtt.protocol: must be "5" or "3.1.1", got'
    )


def test_state_directory_from_systemd_environment() -> None:
    env = {"STATE_DIRECTORY": "/var/lib/lkbridge-a:/var/lib/other"}
    assert parse("", environ=env).state.directory == Path("/var/lib/lkbridge-a")
    explicit = parse('[state]\ndirectory = "/srv/x"\n', environ=env)
    assert explicit.state.directory == Path("/srv/x")
    assert parse("", environ={"STATE_DIRECTORY": "relative"}).state.directory == Path(
        "/var/lib/lkbridge"
    )


# -- the example file -----------------------------------------------------------------------------


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE, environ={}, hostname="h")
    kitchen = config.sessions["kitchen"]
    assert kitchen.token == MintedTokenConfig(
        url="ws://127.0.0.1:7880", api_key="devkey", api_secret=Secret.env("LIVEKIT_API_SECRET")
    )
    assert config.source == str(EXAMPLE)


def test_example_config_resolves_with_the_secret_set() -> None:
    config = load_config(
        EXAMPLE, environ={"LIVEKIT_API_SECRET": "s3cret-value"}, resolve_secrets=True
    )
    token = config.sessions["kitchen"].token
    assert isinstance(token, MintedTokenConfig)
    assert token.api_secret.reveal({"LIVEKIT_API_SECRET": "x1234"}) == "x1234"


def _documented_keys(text: str) -> set[str]:
    return set(re.findall(r"^#?\s*([a-z_]+)\s*=", text, re.MULTILINE))


def _model_keys() -> set[str]:
    """Every key of the schema (tables excluded), from the models themselves."""
    models = [
        MqttConfig,
        TlsConfig,
        StateConfig,
        LogConfig,
        PluginsConfig,
        HomeAssistantConfig,
        SessionConfig,
        MintedTokenConfig,
        LiteralTokenConfig,
        EndpointTokenConfig,
        DevelopmentTokenConfig,
        WyomingConfig,
    ]
    fields = {f.name for m in models for f in dataclasses.fields(m)}
    return (fields - {"id", "token", "transports", "tls", "wyoming"}) | {"source"}


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    assert _model_keys() - _documented_keys(text) == set()
    for header in ("[mqtt.tls]", "[sessions.kitchen.transports.chat]", 'source = "literal"'):
        assert header in text
    for source in ("endpoint", "development"):
        assert f'source = "{source}"' in text


def test_configuration_doc_describes_every_key() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    missing = {key for key in _model_keys() if f"`{key}`" not in doc}
    assert missing == set()
    for table in ("[mqtt]", "[mqtt.tls]", "[state]", "[log]", "[plugins]", "[homeassistant]"):
        assert f"`{table}`" in doc
    for source in ("minted", "literal", "endpoint", "development"):
        assert f'`source = "{source}"`' in doc


# -- errors, with paths ---------------------------------------------------------------------------


def test_config_error_lists_every_problem_one_per_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse(
            """
            bogus = 1
            [mqtt]
            port = "1883"
            [sessions.kitchen.token]
            source = "minted"
            url = "ftp://x"
            api_key = "devkey"
            api_secret = { env = "S" }
            [sessions.hall.token]
            source = "literal"
            server_url = "localhost:7880"
            """
        )
    error = info.value
    assert str(error).splitlines() == [
        "mqtt.port: expected an integer, got a string",
        "sessions.kitchen.token.url: must be ws://, wss://, http:// or https://",
        "sessions.hall.token.server_url: must be ws://, wss://, http:// or https://",
        "sessions.hall.token.participant_token: is required",
        "bogus: unknown key",
    ]
    assert error.source == "test.toml"
    assert all(isinstance(p, Problem) for p in error.problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nhots = 'x'\n", "mqtt.hots: unknown key (did you mean 'host'?)"),
        ("[mqtt.tls]\ncafile = '/x'\n", "mqtt.tls.cafile: unknown key (did you mean 'ca_file'?)"),
        ("[state]\nlimit = 1\n", "state.limit: unknown key"),
        ("[log]\nlvl = 'info'\n", "log.lvl: unknown key (did you mean 'level'?)"),
        ("[plugins]\nenable = []\n", "plugins.enable: unknown key (did you mean 'disable'?)"),
        ("[homeassistant]\nprefix = 'x'\n", "homeassistant.prefix: unknown key"),
        ("[mqtt]\n'bad key' = 1\n", 'mqtt."bad key": unknown key'),
        ("[extra]\n", "extra: unknown key"),
        (
            MINTED + "[sessions.kitchen]\nagent = 'x'\n",
            "sessions.kitchen.agent: unknown key (did you mean 'agent_name'?)",
        ),
        (
            MINTED.replace('api_key = "devkey"', 'api_key = "devkey"\napikey = "x"'),
            "sessions.kitchen.token.apikey: unknown key (did you mean 'api_key'?)",
        ),
    ],
)
def test_unknown_keys_are_named_with_their_path(text: str, expected: str) -> None:
    assert one_problem(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[mqtt]\nport = 0\n", "mqtt.port: must be between 1 and 65535, got 0"),
        ("[mqtt]\nport = 70000\n", "mqtt.port: must be between 1 and 65535, got 70000"),
        ("[mqtt]\nport = true\n", "mqtt.port: expected an integer, got a boolean"),
        ("[mqtt]\nport = 1.5\n", "mqtt.port: expected an integer, got a float"),
        ("[mqtt]\nhost = ''\n", "mqtt.host: must not be empty"),
        ("[mqtt]\nhost = 1\n", "mqtt.host: expected a string, got an integer"),
        ("[mqtt]\nkeepalive = -1\n", "mqtt.keepalive: must be between 0 and 65535, got -1"),
        ("[mqtt]\nqueue_limit = -1\n", "mqtt.queue_limit: must be at least 0, got -1"),
        (
            "[mqtt]\nmax_payload_bytes = 0\n",
            "mqtt.max_payload_bytes: must be between 1 and 268435455, got 0",
        ),
        ("mqtt = 3\n", "mqtt: expected a table, got an integer"),
        (
            "[mqtt.tls]\nca_file = 'ca.pem'\n",
            "mqtt.tls.ca_file: must be an absolute path, got 'ca.pem'",
        ),
        ("[mqtt.tls]\nkey_file = '/k'\n", "mqtt.tls.key_file: needs cert_file as well"),
        (
            "[mqtt.tls]\ninsecure = 'yes'\n",
            "mqtt.tls.insecure: expected true or false, got a string",
        ),
        (
            "[mqtt]\nprotocol = '3.1.1'\npassword = 'x'\n",
            "mqtt.password: needs a username with MQTT 3.1.1",
        ),
        (
            "[state]\nhistory_limit = -5\n",
            "state.history_limit: must be between 0 and 10000000, got -5",
        ),
        (
            "[state]\ndirectory = 'state'\n",
            "state.directory: must be an absolute path, got 'state'",
        ),
        (
            "[log]\nlevel = 'verbose'\n",
            "log.level: must be one of debug, info, warning, error, got 'verbose'",
        ),
        ("[log]\nformat = 'xml'\n", "log.format: must be one of auto, json, console, got 'xml'"),
        (
            "[plugins]\ndisable = 'mqtt'\n",
            "plugins.disable: expected an array of names, got a string",
        ),
        (
            "[plugins]\ndisable = ['a b']\n",
            "plugins.disable[0]: must be a name like chat, got 'a b'",
        ),
        (
            "[homeassistant]\nenabled = 1\n",
            "homeassistant.enabled: expected true or false, got an integer",
        ),
        (
            "[homeassistant]\ndiscovery_prefix = 'ha/'\n",
            "homeassistant.discovery_prefix: must not have empty topic levels"
            " (a leading, trailing or double /)",
        ),
    ],
)
def test_bad_values_are_named_with_their_path(text: str, expected: str) -> None:
    assert one_problem(text) == expected


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("a/+/b", "must not contain the MQTT wildcards + or #"),
        ("a/#", "must not contain the MQTT wildcards + or #"),
        ("a//b", "must not have empty topic levels (a leading, trailing or double /)"),
        ("/a", "must not have empty topic levels (a leading, trailing or double /)"),
        ("a/", "must not have empty topic levels (a leading, trailing or double /)"),
        ("$SYS/x", "must not start with $ (reserved for the broker)"),
        ("a\u0000b", "must not contain NUL characters"),
        ("", "must not be empty"),
    ],
)
def test_base_topic_validation(topic: str, reason: str) -> None:
    assert (
        one_problem(f"[mqtt]\nbase_topic = {json.dumps(topic)}\n") == f"mqtt.base_topic: {reason}"
    )


@pytest.mark.parametrize("session_id", ["Kitchen", "a.b", "x" * 65, "küche"])
def test_bad_session_ids(session_id: str) -> None:
    text = MINTED.replace("sessions.kitchen", f"sessions.{json.dumps(session_id)}")
    problem = one_problem(text)
    assert problem.endswith(": session id must be 1 to 64 characters from a-z, 0-9, _ and -")
    assert problem.startswith("sessions.")


def test_bad_session_id_with_space_is_quoted_in_the_path() -> None:
    text = MINTED.replace("sessions.kitchen", 'sessions."a b"')
    assert one_problem(text).startswith('sessions."a b": session id')


@given(st.from_regex(r"[a-z0-9_-]{1,64}", fullmatch=True))
def test_every_valid_session_id_is_accepted(session_id: str) -> None:
    config = config_from_dict({"sessions": {session_id: minted()}}, environ={}, hostname="h")
    assert list(config.sessions) == [session_id]


def test_session_must_be_a_table_and_needs_a_token() -> None:
    assert problems_of("[sessions]\na = 1\n[sessions.b]\nautostart = true\n") == [
        "sessions.a: expected a table, got an integer",
        'sessions.b.token: is required: a table with source = "minted", "literal", "endpoint",'
        ' "development" or a plugin\'s',
    ]
    assert one_problem("sessions = []\n") == "sessions: expected a table, got an array"


def test_token_needs_a_source() -> None:
    assert (
        one_problem("[sessions.a.token]\nurl = 'ws://x'\n")
        == "sessions.a.token.source: is required"
    )


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (
            {"source": "minted", "url": "ftp://x", "api_key": "k", "api_secret": "s"},
            "sessions.a.token.url: must be ws://, wss://, http:// or https://",
        ),
        (
            {"source": "minted", "url": "ws://", "api_key": "k", "api_secret": "s"},
            "sessions.a.token.url: must include a host name",
        ),
        (
            {"source": "minted", "url": "ws://[::1", "api_key": "k", "api_secret": "s"},
            "sessions.a.token.url: is not a valid URL (must be ws://, wss://, http:// or https://)",
        ),
        (
            {"source": "minted", "url": "ws://x", "api_secret": "s"},
            "sessions.a.token.api_key: is required",
        ),
        (
            {"source": "endpoint", "url": "wss://x/token"},
            "sessions.a.token.url: must be http:// or https://",
        ),
        ({"source": "endpoint"}, "sessions.a.token.url: is required"),
        (
            {"source": "endpoint", "url": "https://x", "headers": {"Bad Header": "v"}},
            'sessions.a.token.headers."Bad Header": is not a valid HTTP header name',
        ),
        (
            {"source": "endpoint", "url": "https://x", "headers": "Authorization: x"},
            "sessions.a.token.headers: expected a table, got a string",
        ),
        ({"source": "development"}, "sessions.a.token.sandbox_id: is required"),
        (
            {"source": "development", "sandbox_id": "x", "base_url": "ws://x"},
            "sessions.a.token.base_url: must be http:// or https://",
        ),
        (
            {"source": "literal", "server_url": "mqtt://x", "participant_token": "eyJ.x.y"},
            "sessions.a.token.server_url: must be ws://, wss://, http:// or https://",
        ),
        (
            {"source": "bad name"},
            "sessions.a.token.source: 'bad name' is not a valid token source name",
        ),
        ({"source": ""}, "sessions.a.token.source: must not be empty"),
    ],
)
def test_token_source_validation(token: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sessions": {"a": {"token": token}}}, environ={})
    assert [str(p) for p in info.value.problems] == [expected]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"autostart": "yes"}, "sessions.a.autostart: expected true or false, got a string"),
        (
            {"agent_connect_timeout": 0},
            "sessions.a.agent_connect_timeout: must be a number greater than 0, got 0",
        ),
        (
            {"agent_connect_timeout": -1.5},
            "sessions.a.agent_connect_timeout: must be a number greater than 0, got -1.5",
        ),
        (
            {"agent_connect_timeout": float("inf")},
            "sessions.a.agent_connect_timeout: must be a number greater than 0, got inf",
        ),
        (
            {"agent_connect_timeout": float("nan")},
            "sessions.a.agent_connect_timeout: must be a number greater than 0, got nan",
        ),
        (
            {"agent_connect_timeout": True},
            "sessions.a.agent_connect_timeout: expected a number, got a boolean",
        ),
        ({"room_name": ""}, "sessions.a.room_name: must not be empty"),
        ({"agent_name": None}, "sessions.a.agent_name: expected a string, got null"),
        (
            {"participant_attributes": {"k": 1}},
            "sessions.a.participant_attributes.k: expected a string, got an integer",
        ),
        (
            {"participant_attributes": "k=v"},
            "sessions.a.participant_attributes: expected a table of strings, got a string",
        ),
        ({"senders": ["chat", "chat"]}, "sessions.a.senders[1]: 'chat' is listed twice"),
        ({"receivers": "chat"}, "sessions.a.receivers: expected an array of names, got a string"),
        ({"receivers": [1]}, "sessions.a.receivers[0]: must be a name like chat, got an integer"),
        (
            {"transports": {"chat": 1}},
            "sessions.a.transports.chat: expected a table, got an integer",
        ),
        (
            {"transports": {"bad name": {}}},
            'sessions.a.transports."bad name": is not a valid transport name',
        ),
        ({"transports": {"chat": {"x": None}}}, "sessions.a.transports.chat.x: must not be null"),
        ({"transports": "chat"}, "sessions.a.transports: expected a table, got a string"),
    ],
)
def test_session_value_validation(extra: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"sessions": {"a": minted(**extra)}}, environ={})
    assert [str(p) for p in info.value.problems] == [expected]


def test_empty_metadata_is_allowed() -> None:
    config = config_from_dict(
        {"sessions": {"a": minted(agent_metadata="", participant_metadata="")}}, environ={}
    )
    assert config.sessions["a"].agent_metadata == ""


def test_many_problems_in_many_sessions_are_all_listed() -> None:
    data = {
        "sessions": {
            name: {"token": {"source": "minted", "url": "x"}, "autostart": 1}
            for name in ("one", "two", "three")
        }
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, environ={})
    paths = [p.path for p in info.value.problems]
    for name in ("one", "two", "three"):
        for key in ("token.url", "token.api_key", "token.api_secret", "autostart"):
            assert f"sessions.{name}.{key}" in paths
    assert len(paths) == 12


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    file = tmp_path / "broken.toml"
    file.write_text("[mqtt\nhost = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    (problem,) = info.value.problems
    assert problem.path == str(file)
    assert problem.message.startswith("invalid TOML:") and "line 1" in problem.message


def test_missing_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(bad)


# -- secrets --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ('"inline-secret"', SecretKind.INLINE),
        ('{ env = "MQTT_PW" }', SecretKind.ENV),
        ('{ file = "/run/pw" }', SecretKind.FILE),
        ('{ credential = "mqtt-password" }', SecretKind.CREDENTIAL),
    ],
)
def test_secret_forms(value: str, kind: SecretKind) -> None:
    secret = parse(f"[mqtt]\nusername = 'u'\npassword = {value}\n").mqtt.password
    assert secret is not None and secret.kind is kind
    assert secret.path == "mqtt.password"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('""', "must not be empty"),
        ("42", "must be a string or a table with exactly one of env, file or credential"),
        ("{}", "must be a string or a table with exactly one of env, file or credential"),
        ('{ env = "A", file = "/b" }', "must be a string or a table with exactly one of"),
        ('{ envv = "A" }', "must be a string or a table with exactly one of"),
        ("{ env = 3 }", "env: must be a non-empty string"),
        ('{ env = "" }', "env: must be a non-empty string"),
        ('{ env = "1BAD-NAME" }', "env: '1BAD-NAME' is not a valid environment variable name"),
        ('{ file = "relative/pw" }', "file: must be an absolute path, got 'relative/pw'"),
        (
            '{ credential = "../etc/shadow" }',
            "credential: '../etc/shadow' is not a valid credential name",
        ),
    ],
)
def test_bad_secret_values(value: str, reason: str) -> None:
    problem = one_problem(f"[mqtt]\nusername = 'u'\npassword = {value}\n")
    assert problem.startswith(f"mqtt.password: {reason}")


def test_secret_never_shows_its_value() -> None:
    secret = Secret.inline("hunter2-very-secret", "mqtt.password")
    for shown in (repr(secret), str(secret), f"{secret}", f"{secret!r}"):
        assert shown == "***"
    config = parse("[mqtt]\nusername = 'u'\npassword = 'hunter2-very-secret'\n")
    assert "hunter2" not in repr(config)
    assert "hunter2" not in json.dumps(config.redacted())
    with pytest.raises(TypeError):
        json.dumps(secret)
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(TypeError):
        tomli_w.dumps({"x": secret})
    assert copy.deepcopy(secret) is secret and copy.copy(secret) is secret
    assert "hunter2" not in repr(dataclasses.asdict(config.mqtt))


def test_secret_equality_ignores_the_path() -> None:
    assert Secret.env("A", "x") == Secret.env("A", "y")
    assert hash(Secret.env("A", "x")) == hash(Secret.env("A", "y"))
    assert Secret.env("A") != Secret.file("A") and Secret.env("A") != "A"
    assert Secret.inline("a") != Secret.inline("b")


def test_secret_resolution_from_env_file_and_credential(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "lk-secret").write_text("from-credential")
    env = {"LK": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    assert Secret.inline("inline-value").reveal(env) == "inline-value"
    assert Secret.env("LK").reveal(env) == "from-env"
    assert Secret.file(str(tmp_path / "pw")).reveal(env) == "from-file"
    assert Secret.credential("lk-secret").reveal(env) == "from-credential"


def test_secret_resolution_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKBRIDGE_TEST_SECRET", "value-from-os")
    assert Secret.env("LKBRIDGE_TEST_SECRET").reveal() == "value-from-os"


def test_secret_resolution_errors_name_the_path(tmp_path: Path) -> None:
    def fails(secret: Secret, env: dict[str, str]) -> str:
        with pytest.raises(SecretError) as info:
            secret.reveal(env)
        assert info.value.path == "sessions.a.token.api_secret"
        assert str(info.value).startswith("sessions.a.token.api_secret: ")
        return info.value.message

    path = "sessions.a.token.api_secret"
    assert fails(Secret.env("NOPE", path), {}) == "environment variable NOPE is not set"
    assert fails(Secret.env("EMPTY", path), {"EMPTY": ""}) == "environment variable EMPTY is empty"
    missing = tmp_path / "missing"
    assert (
        fails(Secret.file(str(missing), path), {}) == f"file {missing} does not exist ({missing})"
    )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert fails(Secret.file(str(empty), path), {}) == f"file {empty} is empty"
    assert fails(Secret.file(str(tmp_path), path), {}).startswith(f"file {tmp_path} cannot be read")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    assert (
        fails(Secret.file(str(binary), path), {}) == f"file {binary} is not UTF-8 text ({binary})"
    )
    assert "CREDENTIALS_DIRECTORY is not set" in fails(Secret.credential("c", path), {})
    message = fails(Secret.credential("c", path), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert message == f"credential c does not exist ({tmp_path / 'c'})"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_file(tmp_path: Path) -> None:
    file = tmp_path / "pw"
    file.write_text("x")
    file.chmod(0)
    with pytest.raises(SecretError, match="permission denied"):
        Secret.file(str(file)).reveal({})


def test_resolve_secrets_at_load_lists_every_missing_secret(tmp_path: Path) -> None:
    text = """
    [mqtt]
    username = "u"
    password = { env = "MQTT_PW" }
    [sessions.a.token]
    source = "literal"
    server_url = "wss://x"
    participant_token = { file = "/nonexistent/token" }
    [sessions.b.token]
    source = "endpoint"
    url = "https://x"
    headers = { Authorization = { credential = "auth" }, X-Ok = "plain-header" }
    """
    assert parse(text)  # lazily resolved: loading succeeds without them
    assert problems_of(text, resolve_secrets=True) == [
        "mqtt.password: environment variable MQTT_PW is not set",
        "sessions.a.token.participant_token: file /nonexistent/token does not exist"
        " (/nonexistent/token)",
        "sessions.b.token.headers.Authorization: credential auth: $CREDENTIALS_DIRECTORY is not"
        " set (provide it with LoadCredential= in the systemd unit)",
    ]
    (tmp_path / "auth").write_text("Bearer abc")
    token = tmp_path / "token"
    token.write_text("eyJ.a.b")
    env = {"MQTT_PW": "pw-value", "CREDENTIALS_DIRECTORY": str(tmp_path)}
    resolved = parse(
        text.replace("/nonexistent/token", str(token)), environ=env, resolve_secrets=True
    )
    assert resolved.mqtt.password is not None and resolved.mqtt.password.reveal(env) == "pw-value"


def test_redacted_config_hides_inline_secrets_and_shows_references() -> None:
    config = parse(
        """
        [mqtt]
        username = "u"
        password = "mqtt-inline-pw"
        [sessions.a.token]
        source = "minted"
        url = "ws://x"
        api_key = "devkey"
        api_secret = { env = "LK_SECRET" }
        [sessions.b.token]
        source = "literal"
        server_url = "wss://x"
        participant_token = "eyJhbGciOi.eyJzdWIi.sig-inline"
        [sessions.c.token]
        source = "vault"
        vault_token = "vault-inline-token"
        mount = "kv"
        [sessions.c.transports.mqtt]
        password = { file = "/run/pw" }
        """
    )
    data = config.redacted()
    text = json.dumps(data)
    for leaked in ("mqtt-inline-pw", "sig-inline", "vault-inline-token"):
        assert leaked not in text
    assert data["mqtt"]["password"] == "***"
    assert data["sessions"]["a"]["token"] == {
        "source": "minted",
        "url": "ws://x",
        "api_key": "devkey",
        "api_secret": {"env": "LK_SECRET"},
    }
    assert data["sessions"]["b"]["token"]["participant_token"] == "***"
    assert data["sessions"]["c"]["token"] == {
        "source": "vault",
        "vault_token": "***",
        "mount": "kv",
    }
    assert data["sessions"]["c"]["transports"] == {"mqtt": {"password": {"file": "/run/pw"}}}
    assert data["state"]["directory"] == "/var/lib/lkbridge" and "source" not in data
    assert json.loads(text) == data


def test_plugin_token_source_keeps_options_frozen_with_secrets() -> None:
    config = parse(
        """
        [sessions.a.token]
        source = "my-plugin.tokens"
        endpoint = "https://example.com"
        retries = 3
        api_key = { env = "PLUGIN_KEY" }
        when = 1979-05-27T07:32:00Z
        auth = { user = "me", password = "inline-pw" }
        tokens = ["one-token", { env = "TWO" }]
        token_ttl = 600
        """
    )
    token = config.sessions["a"].token
    assert isinstance(token, PluginTokenConfig)
    assert token.source == "my-plugin.tokens"
    options = token.options
    assert options["endpoint"] == "https://example.com" and options["retries"] == 3
    assert options["api_key"] == Secret.env("PLUGIN_KEY")
    assert options["auth"] == {"user": "me", "password": Secret.inline("inline-pw")}
    assert options["tokens"] == (Secret.inline("one-token"), Secret.env("TWO"))
    assert options["token_ttl"] == 600  # not a string: not a secret
    assert isinstance(options, FrozenMap) and isinstance(options["auth"], FrozenMap)
    hash(token)
    assert {s.path for s in config.secrets()} == {
        "sessions.a.token.api_key",
        "sessions.a.token.auth.password",
        "sessions.a.token.tokens[0]",
        "sessions.a.token.tokens[1]",
    }


def test_frozen_map_behaves_like_a_read_only_mapping() -> None:
    frozen = FrozenMap({"a": 1, "b": (2,)})
    assert frozen == {"a": 1, "b": (2,)} and frozen == FrozenMap({"b": (2,), "a": 1})
    assert hash(frozen) == hash(FrozenMap({"b": (2,), "a": 1}))
    assert list(frozen) == ["a", "b"] and len(frozen) == 2 and "a" in frozen
    assert repr(frozen) == "FrozenMap({'a': 1, 'b': (2,)})"


# -- sessions added at runtime --------------------------------------------------------------------


def test_session_from_table_accepts_references() -> None:
    session = session_from_table("porch", minted(agent_name="a"))
    assert session.id == "porch" and session.agent_name == "a"
    assert isinstance(session.token, MintedTokenConfig)
    assert session.token.api_secret.path == "sessions.porch.token.api_secret"


def test_session_from_table_refuses_inline_secrets_with_paths() -> None:
    table = {
        "token": {
            "source": "endpoint",
            "url": "https://x",
            "headers": {"Authorization": "Bearer plain", "X-Ok": {"env": "H"}},
        },
        "transports": {"chat": {"password": "inline"}},
    }
    with pytest.raises(ConfigError) as info:
        session_from_table("porch", table)
    reason = (
        "an inline secret cannot be stored by lkbridge; give it as a reference:"
        ' { env = "NAME" }, { file = "/path" } or { credential = "NAME" }'
    )
    assert [str(p) for p in info.value.problems] == [
        f"sessions.porch.token.headers.Authorization: {reason}",
        f"sessions.porch.transports.chat.password: {reason}",
    ]
    allowed = session_from_table("porch", table, allow_inline_secrets=True)
    assert isinstance(allowed.token, EndpointTokenConfig)
    assert allowed.token.headers["Authorization"].is_inline


@pytest.mark.parametrize(
    ("session_id", "table", "expected"),
    [
        (
            "Bad",
            minted(),
            "sessions.Bad: session id must be 1 to 64 characters from a-z, 0-9, _ and -",
        ),
        ("ok", [], "sessions.ok: expected a table, got an array"),
        (
            "ok",
            {},
            'sessions.ok.token: is required: a table with source = "minted", "literal",'
            ' "endpoint", "development" or a plugin\'s',
        ),
        ("ok", minted(unknown=1), "sessions.ok.unknown: unknown key"),
        ("ok", minted(senders=None), "sessions.ok.senders: expected an array of names, got null"),
    ],
)
def test_session_from_table_errors(session_id: str, table: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        session_from_table(session_id, table)
    assert str(info.value).splitlines()[-1] == expected


@pytest.mark.parametrize(
    "token",
    [
        {"source": "minted", "url": "wss://x", "api_key": "k", "api_secret": {"env": "S"}},
        {"source": "literal", "server_url": "https://x", "participant_token": {"file": "/t"}},
        {"source": "endpoint", "url": "https://x", "headers": {"A": {"credential": "c"}}},
        {"source": "endpoint", "url": "https://x"},
        {"source": "development", "sandbox_id": "sb-1"},
        {"source": "plug", "n": 1, "secret": {"env": "P"}, "deep": {"list": [1, "a"]}},
    ],
)
def test_session_table_round_trip(token: dict[str, Any]) -> None:
    session = session_from_table(
        "s",
        {
            "token": token,
            "agent_name": "a",
            "participant_attributes": {"k": "v"},
            "receivers": ["transcription"],
            "transports": {"transcription": {"x": [1, 2]}},
        },
    )
    table = session_to_table(session)
    assert "id" not in table and table["token"]["source"] == token["source"]
    assert session_from_table("s", json.loads(json.dumps(table))) == session
    assert session_from_table("s", parse_toml_roundtrip(table)) == session


def parse_toml_roundtrip(table: dict[str, Any]) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(tomli_w.dumps(table))


def test_session_to_table_refuses_inline_secrets() -> None:
    session = parse(MINTED.replace('{ env = "LIVEKIT_API_SECRET" }', '"inline-secret"')).sessions[
        "kitchen"
    ]
    with pytest.raises(ConfigError, match=r"sessions\.kitchen\.token\.api_secret: an inline"):
        session_to_table(session)


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_round_trip_atomically_with_templates_only(tmp_path: Path) -> None:
    path = tmp_path / "state" / OVERRIDES_FILE
    porch = runtime_session("porch", "assistant", "porch-agent", '{"room": "porch"}')
    hall = runtime_session("hall", "assistant")
    write_overrides(path, {"porch": porch, "hall": hall}, removed=["old", "old"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [OVERRIDES_FILE]  # no temp file left
    text = path.read_text()
    assert text.startswith("# Written by lkbridge")
    assert "token" not in text and "://" not in text  # no source, secret or address, ever
    overrides = load_overrides(path)
    assert overrides == Overrides(FrozenMap({"porch": porch, "hall": hall}), frozenset({"old"}))
    write_overrides(path, [hall])  # an iterable of sessions works too
    assert load_overrides(path) == Overrides(FrozenMap({"hall": hall}))


def test_missing_overrides_file_means_no_overrides(tmp_path: Path) -> None:
    assert load_overrides(tmp_path / OVERRIDES_FILE) == Overrides()


def test_a_0_1_overrides_file_with_free_form_sessions_is_reported_and_ignored(
    tmp_path: Path,
) -> None:
    """0.1 let session/add store any session: endpoint URLs and header secrets of the caller's
    choosing. Such sessions are never loaded again; they are listed, and backed up once."""
    path = tmp_path / OVERRIDES_FILE
    legacy = (
        'removed = []\n[sessions.evil.token]\nsource = "endpoint"\nurl = "http://10.0.0.9/x?k=v"\n'
        '[sessions.evil.token.headers]\nAuthorization = { env = "HOME_SECRET" }\n'
        '[sessions.mine]\ntemplate = "assistant"\n'
    )
    path.write_text(legacy)
    overrides = load_overrides(path)
    assert list(overrides.sessions) == ["mine"]
    assert len(overrides.ignored) == 1 and overrides.ignored[0].startswith("sessions.evil: ")
    write_overrides(path, overrides.sessions, keep_legacy=True)
    assert "evil" not in path.read_text()
    backup = tmp_path / (OVERRIDES_FILE + ".0.1-backup")
    assert backup.read_text() == legacy and stat.S_IMODE(backup.stat().st_mode) == 0o600


def test_runtime_sessions_are_bounded() -> None:
    with pytest.raises(ConfigError) as info:
        runtime_session("bad.id", "no such/template", "x" * 129, "m" * 4097)
    lines = str(info.value).splitlines()
    where = 'sessions."bad.id"'
    assert lines[0].startswith(f"{where}: session id must be")
    assert lines[1] == f"{where}.template: must be the name of a [templates.NAME]"
    assert lines[2].startswith(f"{where}.agent_name: must be 1 to 128 characters")
    assert lines[3] == f"{where}.agent_metadata: must be a string of at most 4096 characters"


def test_overrides_file_with_problems_is_refused(tmp_path: Path) -> None:
    path = tmp_path / OVERRIDES_FILE
    path.write_text(
        "removed = [1]\nsurprise = true\n[sessions.a]\ntemplate = 'x'\ntoken = 'inline'\n"
    )
    with pytest.raises(ConfigError) as info:
        load_overrides(path)
    lines = str(info.value).splitlines()
    assert lines[0] == "removed[0]: must be a name like chat, got an integer"
    assert lines[1] == "sessions.a.token: unknown key"
    assert lines[2] == "surprise: unknown key"
    assert info.value.source == str(path)
    path.write_text("[sessions\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_overrides(path)


def test_overrides_win_per_session_and_user_file_is_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state"
    user_file = tmp_path / "config.toml"
    template = MINTED.replace("[sessions.kitchen", "[templates.assistant")
    user_file.write_text(
        f'[state]\ndirectory = "{state}"\n'
        + MINTED
        + MINTED.replace("kitchen", "hall")
        + MINTED.replace("kitchen", "garage")
        + template
    )
    before = (user_file.read_bytes(), user_file.stat().st_mtime_ns)
    base = load_config(user_file, environ={})
    kitchen2 = runtime_session("kitchen", "assistant", "replacement")
    porch = runtime_session("porch", "assistant")
    overrides = (
        Overrides()
        .with_session(kitchen2)
        .with_session(porch)
        .without_session("garage", base_ids=base.sessions)
        .without_session("never-existed", base_ids=base.sessions)
    )
    assert overrides.removed == {"garage"}
    write_overrides(base.state.directory / OVERRIDES_FILE, overrides.sessions, overrides.removed)
    effective = load_effective_config(user_file, environ={})
    assert list(effective.sessions) == ["kitchen", "hall", "porch"]
    assert effective.sessions["kitchen"].agent_name == "replacement"
    assert effective.sessions["kitchen"].token == base.templates["assistant"].token
    assert effective.sessions["porch"].agent_name == base.templates["assistant"].agent_name
    assert (user_file.read_bytes(), user_file.stat().st_mtime_ns) == before
    # Adding a removed id again clears its removal; removing an added one drops it.
    again = overrides.with_session(runtime_session("garage", "assistant"))
    assert again.removed == frozenset()
    assert "porch" not in overrides.without_session("porch", base_ids=base.sessions).sessions
    # A session whose template is gone is not started, and said so.
    gone = Overrides().with_session(runtime_session("attic", "vanished"))
    assert "attic" not in gone.apply(base).sessions
    assert gone.unresolved(base) == [
        "sessions.attic: template 'vanished' is not in the config file; not started"
    ]


# -- starter config -------------------------------------------------------------------------------


def test_starter_config_is_valid_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_starter_config(path)
    config = load_config(path, environ={})
    (demo,) = config.sessions.values()
    assert demo.token == MintedTokenConfig(
        url="ws://127.0.0.1:7880", api_key="devkey", api_secret=Secret.env("LIVEKIT_API_SECRET")
    )
    assert path.read_text().startswith("# lkbridge configuration")
    path.write_text("# mine\n")
    with pytest.raises(ConfigError) as info:
        write_starter_config(path)
    assert (
        str(info.value)
        == f"{path}: already exists; refusing to overwrite it (choose another path or remove it)"
    )
    assert path.read_text() == "# mine\n"
    with pytest.raises(ConfigError, match="cannot be written"):
        write_starter_config(path / "under-a-file.toml")
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("127.0.0.1", 1883, None)


def test_starter_config_creates_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "lkbridge" / "config.toml"  # a fresh machine has no /etc/lkbridge
    write_starter_config(path)
    assert load_config(path, environ={}).sessions
    assert path.parent.stat().st_mode & 0o777 == 0o755


# -- diffs and plugin names -----------------------------------------------------------------------


def test_diff_configs_classifies_sessions_and_sections() -> None:
    old = parse(
        "[log]\nlevel = 'info'\n"
        + MINTED
        + MINTED.replace("kitchen", "hall")
        + MINTED.replace("kitchen", "gone")
    )
    new = parse(
        "[log]\nlevel = 'debug'\n"
        + MINTED
        + MINTED.replace("kitchen", "hall").replace("LIVEKIT_API_SECRET", "OTHER")
        + MINTED.replace("kitchen", "fresh")
    )
    diff = diff_configs(old, new)
    assert diff.added == ("fresh",)
    assert diff.removed == ("gone",)
    assert diff.changed == ("hall",)
    assert diff.unchanged == ("kitchen",)
    assert diff.sections == ("log",)
    assert diff.sessions_changed
    same = diff_configs(old, parse(_reordered(old)))
    assert not same.sessions_changed and same.sections == ()


def _reordered(config: Config) -> str:
    """The same config written back with keys in a different order."""
    sessions = {
        sid: dict(reversed(list(s.to_table().items()))) for sid, s in config.sessions.items()
    }
    return tomli_w.dumps({"log": {"level": config.log.level}, "sessions": sessions})


def test_unknown_transport_and_token_source_names() -> None:
    config = config_from_dict(
        {
            "sessions": {
                "a": minted(senders=["chat", "mqtt"], receivers=["transcripton"]),
                "b": {"token": {"source": "vault"}},
            }
        },
        environ={},
    )
    problems = unknown_name_problems(
        config, senders={"chat"}, receivers={"chat", "transcription"}, token_sources={"vault"}
    )
    assert [str(p) for p in problems] == [
        "sessions.a.senders[1]: unknown sender 'mqtt'; known: chat",
        "sessions.a.receivers[0]: unknown receiver 'transcripton' (did you mean 'transcription'?);"
        " known: chat, transcription",
    ]
    nothing_known = unknown_name_problems(config, senders=(), receivers=(), token_sources=())
    assert str(nothing_known[-1]) == (
        "sessions.b.token.source: unknown token source 'vault';"
        " known: development, endpoint, literal, minted"
    )


def test_with_sessions_replaces_the_sessions() -> None:
    config = parse(MINTED)
    porch = session_from_table("porch", minted())
    assert list(config.with_sessions([porch]).sessions) == ["porch"]


def test_effective_config_without_an_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    write_starter_config(path)
    assert load_effective_config(path, environ={"STATE_DIRECTORY": str(tmp_path)}).sessions


def test_the_session_id_bridge_is_reserved() -> None:
    from lkbridge.config.files import parse_config, session_from_table
    from lkbridge.config.models import ConfigError

    text = '[sessions.bridge.token]\nsource = "literal"\nserver_url = "ws://x"\nparticipant_token = "t"\n'
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert "sessions.bridge: session id 'bridge' is reserved" in str(err.value)
    with pytest.raises(ConfigError, match="reserved"):
        session_from_table("bridge", {"token": {"source": "literal", "server_url": "ws://x",
                                                "participant_token": {"env": "X"}}})


def test_redacted_config_drops_credentials_carried_in_urls() -> None:
    from lkbridge.config.files import parse_config

    text = (
        '[sessions.kitchen.token]\nsource = "endpoint"\n'
        'url = "https://svc:hunter2@tokens.example.com/issue?api_key=sk-live-123#frag"\n'
    )
    redacted = parse_config(text).redacted()
    url = redacted["sessions"]["kitchen"]["token"]["url"]
    assert url == "https://tokens.example.com/issue"
    assert "hunter2" not in str(redacted) and "sk-live-123" not in str(redacted)


# -- control plane (issue 11) ---------------------------------------------------------------------


def test_control_defaults_and_keys() -> None:
    assert parse("").control == ControlConfig()
    control = parse(
        '[control]\nruntime_sessions = false\nremove_configured = true\n'
        'actions = ["session/send", "session/start"]\nmax_sessions = 5\n'
        "max_requests_in_flight = 8\nrequests_per_second = 2.5\nrequest_burst = 10\n"
    ).control
    assert control == ControlConfig(False, True, ("session/send", "session/start"), 5, 8, 2.5, 10)
    assert control.allows("health_check") and control.allows("session/history")  # always
    assert not control.allows("session/add")


def test_control_refuses_unknown_actions_and_bad_limits() -> None:
    problems = problems_of(
        '[control]\nactions = ["session/explode", 3]\nmax_sessions = 0\n'
        "requests_per_second = 1e308\n"
    )
    assert problems[0].startswith("control.actions[0]: unknown action 'session/explode'")
    assert problems[1].startswith("control.actions[1]: unknown action an integer")
    assert "control.max_sessions: must be between 1 and 10000, got 0" in problems
    assert any(p.startswith("control.requests_per_second: must be at most") for p in problems)


def test_templates_are_sessions_of_their_own_namespace() -> None:
    config = parse(MINTED.replace("[sessions.kitchen", "[templates.assistant"))
    assert list(config.templates) == ["assistant"] and not config.sessions
    assert config.templates["assistant"].token.source == "minted"
    assert problems_of(MINTED.replace("[sessions.kitchen", "[templates.Bad")) == [
        "templates.Bad: template name must be 1 to 64 characters from a-z, 0-9, _ and -"
    ]


def test_agent_connect_timeout_has_an_upper_bound() -> None:
    assert problems_of(MINTED + "[sessions.kitchen]\nagent_connect_timeout = 1e308\n") == [
        "sessions.kitchen.agent_connect_timeout: must be at most 3600, got 1e+308"
    ]
    ok = parse(MINTED + "[sessions.kitchen]\nagent_connect_timeout = 3600\n")
    assert ok.sessions["kitchen"].agent_connect_timeout == 3600


@pytest.mark.parametrize(
    ("key", "topic"),
    [
        ("subscribe_topic", "lkbridge/bridge/request/#"),
        ("subscribe_topic", "#"),
        ("subscribe_topic", "lkbridge/+/+"),
        ("subscribe_topic", "homeassistant/status"),
        ("publish_topic", "lkbridge/kitchen/send"),
    ],
)
def test_mqtt_transport_topics_may_not_overlap_the_bridges_own(key: str, topic: str) -> None:
    text = MINTED + f'[sessions.kitchen.transports.mqtt]\n{key} = "{topic}"\n'
    (problem,) = problems_of(text)
    assert problem.startswith(f"sessions.kitchen.transports.mqtt.{key}: '{topic}' overlaps the")
    template = text.replace("[sessions.kitchen", "[templates.t")
    (problem,) = problems_of(template)
    assert problem.startswith(f"templates.t.transports.mqtt.{key}:")
    fine = MINTED + '[sessions.kitchen.transports.mqtt]\nsubscribe_topic = "lkbridge/kitchen/in"\n'
    assert parse(fine).sessions["kitchen"].transports["mqtt"]["subscribe_topic"]


def test_unknown_names_in_templates_are_reported() -> None:
    config = parse(
        MINTED.replace("[sessions.kitchen", "[templates.assistant")
        + '[templates.assistant]\nreceivers = ["chatt"]\n'
    )
    problems = unknown_name_problems(config, senders=["chat"], receivers=["chat"], token_sources=[])
    assert [str(p) for p in problems] == [
        "templates.assistant.receivers[0]: unknown receiver 'chatt' (did you mean 'chat'?); known: chat"
    ]
