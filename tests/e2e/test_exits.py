"""Exits that behave: Ctrl-C with a broker that was never reachable stops at once, counting
what was left unsent; nothing waits for acknowledgements that cannot come."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.procs import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_ctrl_c_with_an_unreachable_broker(tmp_path: Path) -> None:
    broker_port, livekit_port = free_port(), free_port()  # nothing listens on either
    config = tmp_path / "config.toml"
    config.write_text(
        f'[mqtt]\nserver = "mqtt://127.0.0.1:{broker_port}"\n'
        f'[state]\ndirectory = "{tmp_path / "state"}"\n'
        '[log]\nformat = "json"\n'
        '[sessions.kitchen]\nagent_name = "a"\n'
        '[sessions.kitchen.token]\nsource = "minted"\n'
        f'url = "ws://127.0.0.1:{livekit_port}"\napi_key = "devkey"\n'
        'api_secret = { env = "LKB_TEST_SECRET" }\n'
    )
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-P", "-m", "lkbridge", "run", "-c", str(config)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "LKB_TEST_SECRET": "s" * 32},
        )
    try:
        deadline = time.monotonic() + 60
        while '"daemon_ready"' not in log_path.read_text() and time.monotonic() < deadline:
            assert daemon.poll() is None, log_path.read_text()
            time.sleep(0.2)
        daemon.send_signal(signal.SIGINT)
        assert daemon.wait(30) == 0, log_path.read_text()
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    events = [json.loads(line) for line in log_path.read_text().splitlines()
              if line.startswith("{")]
    names = [e["event"] for e in events]
    assert "daemon_ready" in names
    # Before: "mqtt_close_unacknowledged" after waiting 5 s for a broker that was never there.
    assert "mqtt_close_unacknowledged" not in names, names
    (closed,) = [e for e in events if e["event"] == "mqtt_closed"]
    assert closed["unsent"] > 0  # bridge state, session state, discovery: queued, never sent
    assert names[-1] == "daemon_stopped"
    assert events[-1]["unsent"] == closed["unsent"]  # counted in the last line
