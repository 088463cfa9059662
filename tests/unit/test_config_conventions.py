"""Config conventions: server URLs, a URL in host, and where a misplaced key belongs."""

from __future__ import annotations

import pytest

from lkbridge.config.files import parse_config
from lkbridge.config.models import ConfigError, TlsConfig


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ={})
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("server", "host", "port", "tls"),
    [
        ("mqtt://192.168.1.10:1883", "192.168.1.10", 1883, None),
        ("mqtt://broker.lan", "broker.lan", 1883, None),
        ("mqtts://broker.lan", "broker.lan", 8883, TlsConfig()),
        ("MQTTS://broker.lan:9883/", "broker.lan", 9883, TlsConfig()),
        ("mqtt://[::1]:1884", "::1", 1884, None),
    ],
)
def test_server_url(server: str, host: str, port: int, tls: TlsConfig | None) -> None:
    mqtt = parse_config(f'[mqtt]\nserver = "{server}"\n', environ={}).mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == (host, port, tls)


def test_host_and_port_still_work() -> None:
    mqtt = parse_config('[mqtt]\nhost = "broker.lan"\nport = 1999\n', environ={}).mqtt
    assert (mqtt.host, mqtt.port) == ("broker.lan", 1999)


def test_mqtts_keeps_its_tls_table() -> None:
    text = '[mqtt]\nserver = "mqtts://b"\n[mqtt.tls]\nca_file = "/etc/ssl/ca.pem"\n'
    tls = parse_config(text, environ={}).mqtt.tls
    assert tls is not None and str(tls.ca_file) == "/etc/ssl/ca.pem"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('server = "mqtt://user:hunter22@b:1883"',
         "mqtt.server: must not contain a user name or password: set [mqtt] username and "
         'password (e.g. password = { env = "MQTT_PASSWORD" })'),
        ('server = "http://b:1883"',
         'mqtt.server: must start with mqtt:// or mqtts://; write server = "mqtt://HOST:1883" '
         '(or "mqtts://HOST:8883" for TLS)'),
        ('server = "mqtt://b:1883/x"',
         "mqtt.server: must be mqtt://HOST or mqtt://HOST:PORT, with nothing after the port"),
        ('server = "mqtt://b:99999"',
         'mqtt.server: is not a valid URL; write server = "mqtt://HOST:1883" '
         '(or "mqtts://HOST:8883" for TLS)'),
        ('server = "mqtt://b"\nport = 1884', "mqtt.port: give either server or host and port, "
         "not both"),
        ('server = "mqtt://b"\n[mqtt.tls]\ninsecure = true',
         "mqtt.server: is mqtt:// (no TLS) but [mqtt.tls] is set; write mqtts://"),
        ('host = "mqtt://192.168.1.10:1883"',
         'mqtt.host: takes a host name or address, not a URL; write server = '
         '"mqtt://192.168.1.10:1883" instead of host (or host = the name alone, and port)'),
        ('host = "192.168.1.10:1883"',
         'mqtt.host: takes the host alone; write host = "192.168.1.10" and port = 1883 '
         '(or server = "mqtt://192.168.1.10:1883")'),
    ],
)
def test_clear_errors(text: str, expected: str) -> None:
    assert problems(f"[mqtt]\n{text}\n") == [expected]


def test_a_password_in_a_url_is_never_echoed() -> None:
    for text in ('[mqtt]\nserver = "mqtt://u:hunter22@b"\n',
                 '[mqtt]\nhost = "mqtt://u:hunter22@b:1883"\n'):
        assert not any("hunter22" in p for p in problems(text))


def test_a_misplaced_key_says_where_it_belongs() -> None:
    found = problems(
        '[mqtt]\nagent_name = "x"\nlevel = "debug"\n'
        '[sessions.kitchen]\nbase_topic = "t"\n'
        '[sessions.kitchen.token]\nsource = "minted"\nurl = "ws://x"\napi_key = "k"\n'
        'api_secret = { env = "S" }\nroom_name = "r"\n'
    )
    assert found == [
        "mqtt.agent_name: unknown key in [mqtt]; did you mean [sessions.NAME] agent_name?",
        "mqtt.level: unknown key in [mqtt]; did you mean [log] level?",
        "sessions.kitchen.token.room_name: unknown key in [sessions.NAME.token]; did you mean "
        "[sessions.NAME] room_name?",
        "sessions.kitchen.base_topic: unknown key in [sessions.NAME]; did you mean [mqtt] "
        "base_topic?",
    ]
    assert problems('agent_name = "x"\n') == [
        "agent_name: unknown key at the top level; did you mean [sessions.NAME] agent_name?"
    ]
    # a near miss in the same table is still the first guess
    assert problems("[mqtt]\nhots = 'x'\n") == ["mqtt.hots: unknown key (did you mean 'host'?)"]
