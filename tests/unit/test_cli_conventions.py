"""The command line as users expect it: where the config is, global options, help, pipes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.procs import free_port
from lkbridge.cli.clients import Target
from lkbridge.cli.main import DESCRIPTIONS, build_parser
from tests.unit.test_cli_clients import daemon_target  # noqa: F401 (a fixture: a fake daemon)

ROOT = Path(__file__).resolve().parents[2]
BAD_TOKEN_SOURCE = (
    '[mqtt]\nport = "x"\n'
    '[sessions.kitchen]\nagent_name = "a"\n'
    '[sessions.kitchen.token]\nsource = "mintd"\n'
)


def lkbridge(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
             ) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "LKBRIDGE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-P", "-m", "lkbridge", *args], capture_output=True, text=True,
        env={**environ, **(env or {})}, check=False, timeout=60, cwd=cwd,
    )


def test_check_reports_an_unknown_token_source_with_the_other_problems(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BAD_TOKEN_SOURCE)
    out = lkbridge("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "mqtt.port: expected an integer, got a string" in out.stderr
    assert "sessions.kitchen.token.source: unknown token source 'mintd' (did you mean " \
           "'minted'?)" in out.stderr, out.stderr


def test_check_reads_the_overrides_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.toml").write_text(
        'removed = []\n[sessions.porch]\ntemplate = "kitchen"\nagent_nam = "x"\n')
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[state]\ndirectory = "{state}"\n')
    out = lkbridge("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "sessions.porch.agent_nam: unknown key" in out.stderr, out.stderr


def test_lkbridge_config_is_used_by_check_and_run(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BAD_TOKEN_SOURCE)
    checked = lkbridge("check", env={"LKBRIDGE_CONFIG": str(cfg)})
    assert checked.returncode == 2 and str(cfg) in checked.stderr
    ran = lkbridge("run", env={"LKBRIDGE_CONFIG": str(cfg)})
    assert ran.returncode == 2 and f"lkbridge run: {cfg}: invalid configuration" in ran.stderr


def test_run_and_check_without_a_config_point_at_init(tmp_path: Path) -> None:
    missing = tmp_path / "etc" / "config.toml"
    for command in ("run", "check"):
        out = lkbridge(command, env={"LKBRIDGE_CONFIG": str(missing)})
        assert out.returncode == 2
        assert out.stderr.startswith(f"lkbridge {command}: {missing} does not exist. Write a "
                                     f"starter config with:\n  lkbridge init {missing}\n")


def test_global_options_after_the_subcommand(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    init = lkbridge("init", str(cfg))
    assert init.returncode == 0, init.stderr
    env = {"LIVEKIT_API_SECRET": "s" * 32}
    for args in (["-c", str(cfg), "--log-level", "debug", "check"],
                 ["check", "-c", str(cfg), "--log-level", "debug"],
                 ["--log-level", "error", "check", "--config", str(cfg)]):
        out = lkbridge(*args, env=env)
        assert out.returncode == 0, (args, out.stderr)
        assert "OK" in out.stdout
    parsed = build_parser().parse_args(["--log-level", "info", "run", "--log-level", "debug"])
    assert parsed.log_level == "debug"
    parsed = build_parser().parse_args(["--log-level", "info", "-c", "/x", "run"])
    assert (parsed.log_level, parsed.config) == ("info", "/x")


def test_every_subcommand_help_has_a_description() -> None:
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(commands) == set(DESCRIPTIONS)
    for name in commands:
        out = lkbridge(name, "--help")
        assert out.returncode == 0
        assert DESCRIPTIONS[name].split(":")[0].split(".")[0] in " ".join(out.stdout.split())


def test_status_without_a_config_says_it_uses_defaults(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    out = lkbridge("status", "--port", str(port), cwd=tmp_path)
    if Path("/etc/lkbridge/config.toml").exists():
        pytest.skip("this machine has /etc/lkbridge/config.toml")
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (
        "lkbridge status: no config file (none given with -c or $LKBRIDGE_CONFIG, and "
        f"/etc/lkbridge/config.toml does not exist): using the broker at 127.0.0.1:{port}")


def test_the_unit_and_the_example_config_come_from_the_package() -> None:
    unit = lkbridge("init", "--print-unit")
    assert unit.returncode == 0 and unit.stdout == (ROOT / "systemd/lkbridge.service").read_text()
    example = lkbridge("init", "--print-example")
    assert example.stdout == (ROOT / "config.example.toml").read_text()


def test_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-P", "-m", "lkbridge", "init", "--print-example"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # like `| head` that has read what it wanted
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (0, b"")


async def test_status_json_into_a_closed_pipe_ends_quietly(daemon_target: Target) -> None:  # noqa: F811
    """`lkbridge status --json | head`: head has gone by the time the answer is printed."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-m", "lkbridge", "status", "--json", "--host", "127.0.0.1",
        "--port", str(daemon_target.settings.port), "--base-topic", daemon_target.base_topic,
        stdout=write_end, stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, err) == (0, b"")
