"""Zeroconf advertisement of a session's Wyoming server (`_wyoming._tcp`) for Home Assistant."""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any, Protocol

import structlog

from lkbridge.bridges.hub import Hub

log = structlog.get_logger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
_UNSAFE = re.compile(r"[^A-Za-z0-9 _-]+")
_WILDCARDS = frozenset({"", "0.0.0.0", "::"})


class Advertisement(Protocol):
    async def aclose(self) -> None: ...


class _Nothing:
    async def aclose(self) -> None:
        return None


def instance_name(name: str, session_id: str) -> str:
    """A DNS-SD instance name: the display name made safe, at most 63 bytes, never empty."""
    cleaned = " ".join(_UNSAFE.sub(" ", name).split())[:63].strip()
    return cleaned or f"lkbridge {session_id}"


def advertised_addresses(host: str) -> list[str]:
    """IPv4 addresses to announce: the listen address, or every non-loopback one for a wildcard."""
    if host not in _WILDCARDS:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return []  # a host name: nothing to put in an A record
        if address.version != 4 or address.is_loopback:
            return []
        return [host]
    import ifaddr  # a dependency of zeroconf

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback:
                found.append(ip.ip)
    return sorted(set(found))


class _Registered:
    def __init__(self, zeroconf: Any, info: Any) -> None:
        self._zeroconf = zeroconf
        self._info = info

    async def aclose(self) -> None:
        try:
            await self._zeroconf.async_unregister_service(self._info)
        finally:
            await self._zeroconf.async_close()


async def advertise(
    hub: Hub, session_id: str, name: str, address: tuple[str, int]
) -> Advertisement:
    """Announce the server; a missing `zeroconf` package or a loopback address is reported, and
    the server keeps working without the advertisement."""
    host, port = address
    try:
        from zeroconf import InterfaceChoice
        from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf
    except ImportError:
        reason = "the zeroconf package is not installed (pip install 'lkbridge[zeroconf]')"
        log.error("wyoming_not_advertised", session=session_id, reason=reason)
        hub.report("wyoming_not_advertised", session=session_id, reason=reason)
        return _Nothing()
    addresses = advertised_addresses(host)
    if not addresses:
        reason = f"{host} is not an address another machine can reach"
        log.warning("wyoming_not_advertised", session=session_id, reason=reason)
        hub.report("wyoming_not_advertised", session=session_id, reason=reason)
        return _Nothing()
    instance = instance_name(name, session_id)
    info = AsyncServiceInfo(
        SERVICE_TYPE,
        f"{instance}.{SERVICE_TYPE}",
        addresses=[socket.inet_aton(a) for a in addresses],
        port=port,
        properties={"session": session_id},
    )
    interfaces: Any = InterfaceChoice.All if host in _WILDCARDS else [host]
    zeroconf = AsyncZeroconf(interfaces=interfaces)
    try:
        await zeroconf.async_register_service(info)
    except Exception as exc:
        await zeroconf.async_close()
        log.error("wyoming_not_advertised", session=session_id, reason=str(exc))
        hub.report("wyoming_not_advertised", session=session_id, reason=str(exc))
        return _Nothing()
    log.info("wyoming_advertised", session=session_id, name=instance, addresses=addresses)
    return _Registered(zeroconf, info)
