"""The broker's address in [mqtt]: a server URL (mqtt:// or mqtts://), or host and port."""

from __future__ import annotations

from urllib.parse import urlsplit

from lkbridge.config.models import TlsConfig
from lkbridge.config.reader import TableReader

__all__ = ["mqtt_address"]

_SERVER_FORM = 'write server = "mqtt://HOST:1883" (or "mqtts://HOST:8883" for TLS)'


def _server_url(table: TableReader, tls: TlsConfig | None) -> tuple[str, int, TlsConfig | None] | None:
    """[mqtt] server = "mqtt://host:1883" / "mqtts://host:8883": host, port and TLS, or None."""
    value = table.opt_string("server")
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        table.report("server", f"is not a valid URL; {_SERVER_FORM}")
        return None
    scheme = parts.scheme.lower()
    problem = None
    if scheme not in ("mqtt", "mqtts"):
        problem = f"must start with mqtt:// or mqtts://; {_SERVER_FORM}"
    elif parts.username is not None or parts.password is not None:
        problem = ("must not contain a user name or password: set [mqtt] username and password"
                   ' (e.g. password = { env = "MQTT_PASSWORD" })')
    elif not parts.hostname:
        problem = f"must include a host name; {_SERVER_FORM}"
    elif parts.path not in ("", "/") or parts.query or parts.fragment:
        problem = "must be mqtt://HOST or mqtt://HOST:PORT, with nothing after the port"
    elif scheme == "mqtt" and tls is not None:
        problem = "is mqtt:// (no TLS) but [mqtt.tls] is set; write mqtts://"
    if problem:
        table.report("server", problem)
        return None
    for key in ("host", "port"):
        if key in table.data:
            table.report(key, "give either server or host and port, not both")
    if scheme == "mqtts" and tls is None:
        tls = TlsConfig()
    assert parts.hostname is not None
    return parts.hostname, port or (8883 if scheme == "mqtts" else 1883), tls


def mqtt_address(table: TableReader, tls: TlsConfig | None) -> tuple[str, int, TlsConfig | None]:
    """The broker's host, port and TLS from server, or from host and port."""
    from_server = _server_url(table, tls)
    host = table.string("host", "127.0.0.1")
    port = table.integer("port", 8883 if tls else 1883, 1, 65535)
    if from_server is not None:
        return from_server
    if "://" in host:
        try:
            parts = urlsplit(host)
            hint = f'"{parts.scheme.lower()}://{parts.hostname}:{parts.port or port}"'
        except ValueError:
            hint = '"mqtt://HOST:1883"'
        table.report("host", f"takes a host name or address, not a URL; write server = {hint}"
                     " instead of host (or host = the name alone, and port)")
    elif host.count(":") == 1 and host.rpartition(":")[2].isdigit():
        name, _, number = host.rpartition(":")
        table.report("host", f'takes the host alone; write host = "{name}" and port = {number}'
                     f' (or server = "mqtt://{host}")')
    return host, port, tls
