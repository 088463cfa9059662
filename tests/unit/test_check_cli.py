"""`lkbridge check` and `lkbridge init` as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _lkbridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lkbridge", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, check=False,
    )


def test_check_passes_on_the_example_config() -> None:
    out = _lkbridge("check", "-c", str(ROOT / "config.example.toml"), env={"LIVEKIT_API_SECRET": "s" * 32})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert "OK" in lines[0]
    assert lines[1:] == ["  note: kitchen: Wyoming (Home Assistant Assist) on 127.0.0.1:10700"]


def test_check_names_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[mqtt]\nport = "x"\nbogus = 1\n'
        '[sessions.kitchen]\nsenders = ["carrier-pigeon"]\n'
        '[sessions.kitchen.token]\nsource = "minted"\nurl = "ftp://x"\napi_key = "k"\n'
        'api_secret = { env = "LKB_SURELY_UNSET_VAR" }\n'
    )
    out = _lkbridge("check", "-c", str(bad))
    assert out.returncode == 2
    for expected in ("mqtt.port", "mqtt.bogus: unknown key", "sessions.kitchen.token.url"):
        assert expected in out.stderr, (expected, out.stderr)


def test_check_reports_a_secret_that_cannot_be_resolved(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[sessions.kitchen.token]\nsource = "minted"\nurl = "ws://127.0.0.1:7880"\napi_key = "k"\n'
        'api_secret = { env = "LKB_SURELY_UNSET_VAR" }\n'
    )
    out = _lkbridge("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "sessions.kitchen.token.api_secret" in out.stderr and "LKB_SURELY_UNSET_VAR" in out.stderr


def test_check_reports_unknown_transport_names(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[sessions.kitchen]\nsenders = ["chatt"]\n'
        '[sessions.kitchen.token]\nsource = "literal"\nserver_url = "ws://127.0.0.1:1"\n'
        'participant_token = "abc"\n'
    )
    out = _lkbridge("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "sessions.kitchen.senders[0]: unknown sender 'chatt' (did you mean 'chat'?)" in out.stderr


def test_check_on_invalid_toml_syntax_says_where(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[mqtt\nhost=1\n")
    out = _lkbridge("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "line 1" in out.stderr


def test_init_writes_a_config_that_checks_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "new.toml"
    assert _lkbridge("init", str(path)).returncode == 0
    assert _lkbridge("check", "-c", str(path), env={"LIVEKIT_API_SECRET": "s" * 32}).returncode == 0
    again = _lkbridge("init", str(path))
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr


def test_check_notes_systemd_credentials_instead_of_failing_outside_the_service(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[sessions.kitchen.token]\nsource = "minted"\nurl = "ws://127.0.0.1:7880"\napi_key = "k"\n'
        'api_secret = { credential = "livekit-api-secret" }\n'
    )
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    out = subprocess.run([sys.executable, "-m", "lkbridge", "check", "-c", str(cfg)],
                         capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert "note: sessions.kitchen.token.api_secret: a systemd credential" in out.stdout
    creds = tmp_path / "creds"
    creds.mkdir()
    missing = _lkbridge("check", "-c", str(cfg), env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert missing.returncode == 2 and "livekit-api-secret" in missing.stderr
