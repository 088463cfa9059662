"""The daemon's side of the control plane: templates only, operator sessions kept, bounds, reloads."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lkbridge.bridges.hub import DaemonNotice, HubError, HubEvent
from lkbridge.daemon.core import Daemon

TOKEN = """\
source = "literal"
server_url = "ws://127.0.0.1:9"
participant_token = { env = "LKB_UNIT_TOKEN" }
"""


def write_config(tmp_path: Path, control: str = "") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        [state]
        directory = "{tmp_path / 'state'}"
        [control]
        {control}
        [sessions.kitchen]
        autostart = false
        [sessions.kitchen.token]
        {TOKEN}
        [templates.assistant]
        agent_name = "helper"
        autostart = false
        [templates.assistant.token]
        {TOKEN}
        """))
    return path


@pytest.fixture
def events() -> list[HubEvent]:
    return []


def make(tmp_path: Path, events: list[HubEvent], control: str = "") -> Daemon:
    daemon = Daemon(write_config(tmp_path, control))
    daemon.observe(events.append)
    for cfg in daemon.config.sessions.values():
        daemon._add_runner(cfg)
    return daemon


async def close(daemon: Daemon) -> None:
    for runner in list(daemon.runners.values()):
        await runner.aclose()
    daemon.store.close()


async def test_sessions_are_added_from_templates_only(
    tmp_path: Path, events: list[HubEvent]
) -> None:
    daemon = make(tmp_path, events)
    try:
        state = await daemon.add_session("garage", "assistant", agent_metadata='{"room": 1}')
        assert state.session == "garage"
        cfg = daemon.config.sessions["garage"]
        assert cfg.agent_name == "helper" and cfg.agent_metadata == '{"room": 1}'
        assert cfg.token == daemon.config.templates["assistant"].token
        text = daemon.overrides_path.read_text()
        assert 'template = "assistant"' in text and "LKB_UNIT_TOKEN" not in text
        with pytest.raises(HubError, match="unknown template 'nope'; known: assistant"):
            await daemon.add_session("shed", "nope")
        with pytest.raises(HubError, match="agent_name: must be 1 to 128"):
            await daemon.add_session("shed", "assistant", agent_name="x" * 500)
        # A restart loads it again from the overrides file.
        again = Daemon(daemon.config_path)
        assert again.config.sessions["garage"] == cfg
        again.store.close()
    finally:
        await close(daemon)


async def test_operator_sessions_cannot_be_removed_or_replaced_unless_allowed(
    tmp_path: Path, events: list[HubEvent]
) -> None:
    """0.1: session/remove + session/add replaced a session the operator configured."""
    daemon = make(tmp_path, events)
    try:
        with pytest.raises(HubError, match="defined in the config file; it cannot be removed"):
            await daemon.remove_session("kitchen")
        assert "kitchen" in daemon.session_ids()
        await daemon.add_session("garage", "assistant")
        assert (await daemon.remove_session("garage"))["removed"] is True
    finally:
        await close(daemon)
    allowed = make(tmp_path / "b", events, "remove_configured = true")
    try:
        assert (await allowed.remove_session("kitchen"))["removed"] is True
        await allowed.add_session("kitchen", "assistant")
        assert allowed.config.sessions["kitchen"].agent_name == "helper"
    finally:
        await close(allowed)


async def test_runtime_changes_can_be_turned_off(tmp_path: Path, events: list[HubEvent]) -> None:
    daemon = make(tmp_path, events, "runtime_sessions = false")
    try:
        with pytest.raises(HubError, match=r"turned off \(\[control\] runtime_sessions\)"):
            await daemon.add_session("garage", "assistant")
        with pytest.raises(HubError, match="turned off"):
            await daemon.remove_session("kitchen")
    finally:
        await close(daemon)


async def test_the_number_of_sessions_is_bounded(tmp_path: Path, events: list[HubEvent]) -> None:
    """0.1 accepted 1,000 session/add (each rewriting the overrides file)."""
    daemon = make(tmp_path, events, "max_sessions = 3")
    try:
        await daemon.add_session("a", "assistant")
        await daemon.add_session("b", "assistant")
        with pytest.raises(HubError, match=r"too many sessions: the limit is 3"):
            await daemon.add_session("c", "assistant")
    finally:
        await close(daemon)


async def test_a_flood_of_reloads_costs_one_reload(
    tmp_path: Path, events: list[HubEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.1: 500 config/reload requests held the daemon lock for 205 s (one reload each)."""
    daemon = make(tmp_path, events)
    loads = 0
    real = daemon._load_config

    def counting() -> Any:
        nonlocal loads
        loads += 1
        return real()

    monkeypatch.setattr(daemon, "_load_config", counting)
    try:
        async with daemon._lock:  # a reload (or add) is under way: the flood queues up
            flood = [asyncio.ensure_future(daemon.reload()) for _ in range(500)]
            await asyncio.sleep(0)
        results = await asyncio.gather(*flood)
        assert loads == 1
        assert all(r == results[0] for r in results)
        notices = [e.data for e in events if isinstance(e.data, DaemonNotice)]
        assert sum(1 for n in notices if n.event == "config_reloaded") == 1
        await daemon.reload()  # a later request reads the file again
        assert loads == 2
    finally:
        await close(daemon)


async def test_a_failed_reload_answers_every_waiting_request(
    tmp_path: Path, events: list[HubEvent]
) -> None:
    daemon = make(tmp_path, events)
    try:
        daemon.config_path.write_text("[nope\n")
        async with daemon._lock:
            flood = [asyncio.ensure_future(daemon.reload()) for _ in range(3)]
            await asyncio.sleep(0)
        results = await asyncio.gather(*flood, return_exceptions=True)
        assert all(isinstance(r, HubError) and "config not reloaded" in str(r) for r in results)
    finally:
        await close(daemon)


async def test_a_broken_sessions_reason_is_scrubbed(
    tmp_path: Path, events: list[HubEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a session could not be built for reaches snapshots, errors and health_check."""
    from lkbridge.log import clear_registered_secrets, register_secret

    register_secret("hunter2-hunter2")
    try:
        daemon = make(tmp_path, events)

        def boom(*args: Any, **kwargs: Any) -> Any:
            raise ValueError("endpoint said: Authorization hunter2-hunter2")

        monkeypatch.setattr("lkbridge.daemon.core.build_session", boom)
        await daemon.add_session("garage", "assistant")
        assert "hunter2" not in str(daemon.health())
        assert "hunter2" not in str(daemon.snapshot("garage"))
        assert "hunter2" not in str(daemon.current_error("garage"))
        await close(daemon)
    finally:
        clear_registered_secrets()
