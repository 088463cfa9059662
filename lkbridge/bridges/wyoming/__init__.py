"""The Wyoming bridge: sessions as Home Assistant Assist conversation agents (`handle` services)."""

from __future__ import annotations

from lkbridge.hookspecs import RegisterBridge, hookimpl


class WyomingBridgePlugin:
    """`wyoming`: a Wyoming server per session that has a `[sessions.<id>.wyoming]` table."""

    @hookimpl
    def register_bridges(self, register: RegisterBridge) -> None:
        from lkbridge.bridges.wyoming.bridge import WyomingBridge

        register("wyoming", WyomingBridge)


plugin = WyomingBridgePlugin()
