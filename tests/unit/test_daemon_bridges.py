"""The daemon and its bridges: the Bridge protocol is checked, and no bridge means no start."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from lkbridge.bridges.hub import Bridge, Hub
from lkbridge.daemon.bridges import no_bridge_refusal
from lkbridge.daemon.core import Daemon
from lkbridge.hookspecs import hookimpl
from lkbridge.plugins.host import MQTT_BRIDGE_PLUGIN, PluginHost, PluginInfo


class RecordingBridge:
    """A bridge that records what the daemon asked of it."""

    def __init__(self, hub: Hub, config: Any) -> None:
        self.hub = hub
        self.calls: list[str] = []
        made.append(self)

    async def __aenter__(self) -> RecordingBridge:
        self.calls.append("enter")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.calls.append("exit")

    async def wait_ready(self, timeout: float) -> bool:
        self.calls.append("wait_ready")
        return True

    def status(self) -> str:
        self.calls.append("status")
        return "recording"


made: list[RecordingBridge] = []


class BridgePlugin:
    def __init__(self, factory: Any) -> None:
        self.factory = factory

    @hookimpl
    def register_bridges(self, register: Any) -> None:
        register("test-bridge", self.factory)


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[state]\ndirectory = "{tmp_path / "state"}"\n{extra}')
    return path


def host_with(*factories: Any, disabled_mqtt: bool = False) -> PluginHost:
    host = PluginHost()
    if disabled_mqtt:  # as load_entry_points records a disabled built-in
        host.plugins[MQTT_BRIDGE_PLUGIN] = PluginInfo(
            MQTT_BRIDGE_PLUGIN, "lkbridge", "0", disabled=True
        )
    for index, factory in enumerate(factories):
        host.register(BridgePlugin(factory), f"bridges-{index}")
    return host


async def run_briefly(daemon: Daemon) -> int:
    task = asyncio.get_running_loop().create_task(daemon.run())
    await asyncio.sleep(0.2)
    daemon.request_stop()
    return await asyncio.wait_for(task, 10)


def test_the_protocol_matches_a_bridge_and_refuses_other_objects() -> None:
    assert isinstance(RecordingBridge(None, None), Bridge)  # type: ignore[arg-type]
    assert not isinstance(object(), Bridge)


async def test_the_daemon_drives_a_bridge_through_the_protocol(tmp_path: Path) -> None:
    made.clear()
    daemon = Daemon(write_config(tmp_path), plugins=host_with(RecordingBridge))
    assert await run_briefly(daemon) == 0
    (bridge,) = made
    assert bridge.hub is daemon
    assert bridge.calls[:3] == ["enter", "wait_ready", "status"] and bridge.calls[-1] == "exit"


async def test_a_factory_that_makes_no_bridge_fails_the_start(tmp_path: Path) -> None:
    daemon = Daemon(write_config(tmp_path), plugins=host_with(lambda hub, config: object()))
    assert await asyncio.wait_for(daemon.run(), 10) == 1


async def test_no_bridge_refuses_to_start(tmp_path: Path) -> None:
    daemon = Daemon(write_config(tmp_path), plugins=host_with(disabled_mqtt=True))
    assert "mqtt-bridge" in (no_bridge_refusal(daemon.plugins, daemon.config) or "")
    assert await asyncio.wait_for(daemon.run(), 10) == 1


async def test_no_bridge_runs_when_the_config_allows_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[plugins]\nallow_no_bridge = true\n")
    daemon = Daemon(config, plugins=host_with(disabled_mqtt=True))
    assert no_bridge_refusal(daemon.plugins, daemon.config) is None
    assert await run_briefly(daemon) == 0


async def test_a_disabled_mqtt_bridge_is_allowed_beside_another_bridge(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    made.clear()
    daemon = Daemon(write_config(tmp_path), plugins=host_with(RecordingBridge, disabled_mqtt=True))
    # lkbridge's events are stdlib log records (record.msg: the event's fields)
    with caplog.at_level(logging.DEBUG, logger="lkbridge"):
        assert no_bridge_refusal(daemon.plugins, daemon.config) is None
    events = [r.msg["event"] for r in caplog.records if isinstance(r.msg, dict)]
    assert events == ["mqtt_bridge_disabled"]  # allowed, never silently
    assert await run_briefly(daemon) == 0
