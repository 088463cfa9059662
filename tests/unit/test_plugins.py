"""The plugin host: isolation of broken plugins, name clashes, disable lists, and each hook is called."""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lkbridge.hookspecs import TransportContext, hookimpl
from lkbridge.plugins.host import PluginHost


class Transports:
    @hookimpl
    def register_transports(self, register: Any) -> None:
        register("pigeon", lambda ctx: ("pigeon", ctx.session_id), sender=True)
        register("smoke", lambda ctx: "smoke", receiver=True)


class TokenSources:
    @hookimpl
    def register_token_sources(self, register: Any) -> None:
        register("vault", lambda ctx: ("vault", dict(ctx.options)))


class Bridges:
    @hookimpl
    def register_bridges(self, register: Any) -> None:
        register("carrier", lambda hub, config: (hub, config))


def test_hook_register_transports_is_called_and_builds_per_session() -> None:
    host = PluginHost()
    assert host.register(Transports(), "birds")
    spec = host.transports["pigeon"]
    assert (spec.can_send, spec.can_receive, spec.plugin) == (True, False, "birds")
    assert spec.factory(TransportContext(session_id="kitchen")) == ("pigeon", "kitchen")
    assert host.transports["smoke"].can_receive
    assert host.plugins["birds"].registers == ["transport pigeon (sender)", "transport smoke (receiver)"]


def test_hook_register_token_sources_is_called() -> None:
    host = PluginHost()
    assert host.register(TokenSources(), "vaults")
    assert host.token_sources["vault"].plugin == "vaults"


def test_hook_register_bridges_is_called() -> None:
    host = PluginHost()
    assert host.register(Bridges(), "bridges")
    assert host.bridges["carrier"].factory("hub", "cfg") == ("hub", "cfg")


def test_every_hookspec_has_a_test_and_a_documented_signature() -> None:
    from lkbridge import hookspecs

    names = [n for n in dir(hookspecs) if n.startswith("register_")]
    assert sorted(names) == ["register_bridges", "register_token_sources", "register_transports"]
    tests = {n for n in globals() if n.startswith("test_hook_")}
    docs = (Path(__file__).resolve().parents[2] / "docs" / "plugins.md").read_text()
    for name in names:
        assert any(t.startswith(f"test_hook_{name}") for t in tests), name
        assert f"def {name}(" in docs, f"docs/plugins.md lacks the signature of {name}"


def test_a_hook_that_raises_is_reported_and_others_still_load() -> None:
    class Broken:
        @hookimpl
        def register_transports(self, register: Any) -> None:
            register("half", lambda ctx: None, sender=True)
            raise RuntimeError("boom in hook")

    host = PluginHost()
    assert not host.register(Broken(), "broken")
    assert host.register(Transports(), "birds")
    assert "half" not in host.transports, "a failed plugin's partial registrations are removed"
    assert "pigeon" in host.transports
    (failure,) = host.failures()
    assert failure.name == "broken"
    assert "register_transports raised RuntimeError: boom in hook" in (failure.error or "")


def test_a_misspelt_hook_is_an_error_for_that_plugin() -> None:
    class Misspelt:
        @hookimpl
        def register_transport(self, register: Any) -> None:  # missing "s"
            pass

    host = PluginHost()
    assert not host.register(Misspelt(), "typo")
    assert "register_transport" in (host.plugins["typo"].error or "")
    assert host.register(Transports(), "birds")


def test_a_name_clash_is_reported_and_the_first_registration_kept() -> None:
    class Impostor:
        @hookimpl
        def register_transports(self, register: Any) -> None:
            register("pigeon", lambda ctx: "impostor", sender=True)

    host = PluginHost()
    host.register(Transports(), "birds")
    host.register(Impostor(), "impostor")
    assert host.transports["pigeon"].plugin == "birds"
    assert host.conflicts and "clashes" in host.conflicts[0]
    assert any("ignored" in r for r in host.plugins["impostor"].registers)


def test_an_entry_point_that_fails_to_import_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        md.EntryPoint("ghost", "lkbridge_no_such_module_xyz", "lkbridge"),
        md.EntryPoint("hookspecs-only", "lkbridge.hookspecs", "lkbridge"),
    ]
    host = PluginHost()
    host.load_entry_points(eps)
    assert "import failed: ModuleNotFoundError" in (host.plugins["ghost"].error or "")
    assert host.plugins["hookspecs-only"].loaded


def test_disable_list_from_config_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LKBRIDGE_DISABLE_PLUGINS", "mqtt, transcription")
    host = PluginHost(disable=["chat"])
    assert host.disabled == {"chat", "mqtt", "transcription"}


def _fake_distribution(root: Path, dist: str, module: str, source: str, ep_value: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[lkbridge]\n{module} = {ep_value}\n")


def test_installed_broken_plugins_are_reported_by_the_cli_and_the_rest_load(tmp_path: Path) -> None:
    """Real distributions on sys.path, found through their entry points, listed by `lkbridge plugins`."""
    _fake_distribution(tmp_path, "lkbridge-explodes", "lkbridge_explodes",
                       "raise ImportError('cannot import a thing')\n", "lkbridge_explodes")
    _fake_distribution(tmp_path, "lkbridge-hookfail", "lkbridge_hookfail", """
        from lkbridge.hookspecs import hookimpl
        @hookimpl
        def register_transports(register):
            raise ValueError("bad hook")
        """, "lkbridge_hookfail")
    _fake_distribution(tmp_path, "lkbridge-dupe", "lkbridge_dupe", """
        from lkbridge.hookspecs import hookimpl
        @hookimpl
        def register_transports(register):
            register("chat", lambda ctx: None, sender=True)
            register("dupe-ok", lambda ctx: None, receiver=True)
        """, "lkbridge_dupe")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "lkbridge", "plugins", "--json"],
        capture_output=True, text=True, env=env, check=True,
    )
    listing = {p["name"]: p for p in json.loads(out.stdout)["plugins"]}
    assert listing["lkbridge_explodes"]["error"] == "import failed: ImportError: cannot import a thing"
    assert listing["lkbridge_explodes"]["distribution"] == "lkbridge-explodes"
    assert listing["lkbridge_explodes"]["version"] == "1.2.3"
    assert "ValueError: bad hook" in listing["lkbridge_hookfail"]["error"]
    assert "transport dupe-ok (receiver)" in listing["lkbridge_dupe"]["registers"]
    assert any("chat" in c and "clashes" in c for c in json.loads(out.stdout)["conflicts"])
    # the built-ins still loaded
    assert listing["chat"]["loaded"] and listing["transcription"]["loaded"]
    human = subprocess.run(
        [sys.executable, "-m", "lkbridge", "plugins"], capture_output=True, text=True, env=env, check=True
    ).stdout
    assert "lkbridge_explodes  (lkbridge-explodes 1.2.3)  FAILED" in human
