"""A session that cannot be built reports a config error whose `at` is an ISO 8601 time."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from lkbridge.daemon.core import Daemon


def test_config_error_has_a_time(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        '[sessions.kitchen]\nagent_name = "a"\n'
        '[sessions.kitchen.token]\nsource = "minted"\nurl = "ws://127.0.0.1:1"\n'
        'api_key = "k"\napi_secret = { env = "LKB_SURELY_UNSET_SECRET" }\n'
    )
    daemon = Daemon(config)
    try:
        daemon._add_runner(daemon.config.sessions["kitchen"])
        error = daemon.current_error("kitchen")
        assert error is not None and error.kind == "config"
        assert error.at is not None and datetime.fromisoformat(error.at).tzinfo is not None
        assert daemon.snapshot("kitchen").error == error
        assert error.to_json()["at"] == error.at  # what MQTT carries
    finally:
        daemon.store.close()
