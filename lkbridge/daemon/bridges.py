"""The daemon's bridges: whether it may start with those it has, entering them, waiting for them."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

from lkbridge.bridges.hub import Bridge, Hub
from lkbridge.config.models import Config
from lkbridge.errors import LkbridgeError
from lkbridge.log import get_logger
from lkbridge.plugins.host import MQTT_BRIDGE_PLUGIN, PluginHost

log = get_logger(__name__)


class BridgeFailed(LkbridgeError):
    """A bridge could not be made or entered; the message names it and says why."""


def no_bridge_refusal(plugins: PluginHost, config: Config) -> str | None:
    """Why the daemon must not start with the bridges it has (None: it may); warns about a
    disabled built-in bridge. Sessions no bridge can reach would run, look healthy, and serve
    nobody, so running without a bridge takes `[plugins] allow_no_bridge = true`."""
    mqtt_info = plugins.plugins.get(MQTT_BRIDGE_PLUGIN)
    why = ""
    if mqtt_info is not None and mqtt_info.disabled:
        why = f" (the built-in {MQTT_BRIDGE_PLUGIN!r} plugin is disabled)"
        log.warning("mqtt_bridge_disabled", plugin=MQTT_BRIDGE_PLUGIN,
                    effect="sessions are not reachable over MQTT")
    elif mqtt_info is not None and mqtt_info.error is not None:
        why = f" ({MQTT_BRIDGE_PLUGIN!r} failed to load: {mqtt_info.error})"
    if plugins.bridges:
        return None
    if config.plugins.allow_no_bridge:
        log.warning("running_without_bridges", reason="[plugins] allow_no_bridge = true")
        return None
    return f"no bridge is loaded{why}; set [plugins] allow_no_bridge = true to run without one"


async def enter_bridges(
    stack: AsyncExitStack, hub: Hub, plugins: PluginHost, config: Config
) -> list[Bridge]:
    """Make every registered bridge and enter it on stack; BridgeFailed at the first that fails."""
    bridges: list[Bridge] = []
    for name, spec in plugins.bridges.items():
        try:
            bridge = spec.factory(hub, config)
            if not isinstance(bridge, Bridge):
                raise TypeError(
                    f"its factory made {type(bridge).__name__}, not a Bridge "
                    "(an async context manager with wait_ready() and status())"
                )
            await stack.enter_async_context(bridge)
        except Exception as exc:
            log.error("bridge_failed", bridge=name, plugin=spec.plugin, error=str(exc))
            raise BridgeFailed(f"bridge {name} failed: {exc}") from exc
        bridges.append(bridge)
        log.info("bridge_started", bridge=name)
    return bridges


async def wait_ready(bridges: list[Bridge], timeout: float) -> None:
    """Wait (at most timeout, all at once) for the bridges to serve; a late one is logged only."""

    async def one(bridge: Bridge) -> None:
        if not await bridge.wait_ready(timeout):
            log.warning("bridge_not_ready", bridge=type(bridge).__name__, waited=timeout)

    await asyncio.gather(*(one(b) for b in bridges))
