"""Zeroconf advertisement of a Wyoming server, resolved by a zeroconf client inside the namespace."""

from __future__ import annotations

import socket

import pytest

from lkbridge.bridges.wyoming.bridge import WyomingBridge
from tests.conftest import TEST_ADDR, _unavailable
from tests.unit.test_wyoming_bridge import session, setup

pytestmark = pytest.mark.e2e


async def test_the_session_is_advertised_as_wyoming_tcp() -> None:
    if TEST_ADDR.startswith("127."):
        _unavailable("zeroconf needs the test namespace's own address (run under scripts/netns-run)")
    from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

    with socket.socket() as sock:
        sock.bind((TEST_ADDR, 0))
        port = sock.getsockname()[1]
    hub, config = setup(session("kitchen", host=TEST_ADDR, port=port, name="Kitchen agent",
                                zeroconf=True))  # fmt: skip
    async with WyomingBridge(hub, config):  # type: ignore[arg-type]
        browser = AsyncZeroconf(interfaces=[TEST_ADDR])
        try:
            info = AsyncServiceInfo("_wyoming._tcp.local.", "Kitchen agent._wyoming._tcp.local.")
            found = await info.async_request(browser.zeroconf, 5000)
        finally:
            await browser.async_close()
    assert found, "the advertisement was not answered"
    assert info.port == port
    assert info.parsed_addresses() == [TEST_ADDR]
    assert info.properties[b"session"] == b"kitchen"
