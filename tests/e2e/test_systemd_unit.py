"""The systemd unit: hardening score, a clean verify, and hardening that still lets LiveKit work."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "lkbridge.service"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if IN_CI:
            pytest.fail(f"CI=true and {tool} is missing (Debian: apt-get install systemd)")
        pytest.skip(f"{tool} is not installed (Debian: apt-get install systemd)")
    return path


def test_security_exposure_is_at_most_2() -> None:
    tool = _need("systemd-analyze")
    out = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True, text=True, check=False,
    )
    match = re.search(r"Overall exposure level for lkbridge\.service: ([0-9.]+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) <= 2.0, out.stdout[-3000:]


def test_verify_is_clean_for_the_unit_as_installed(tmp_path: Path) -> None:
    """Verify the unit with ExecStart pointing at this checkout's lkbridge, as an install would."""
    tool = _need("systemd-analyze")
    lkbridge = Path(sys.executable).parent / "lkbridge"
    assert lkbridge.exists(), lkbridge
    text = UNIT.read_text().replace("/opt/lkbridge/bin/lkbridge", str(lkbridge))
    unit = tmp_path / "lkbridge.service"
    unit.write_text(text)
    out = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


def test_unit_has_the_operational_settings_users_rely_on() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/opt/lkbridge/bin/lkbridge reload --pid $MAINPID",
                 "WatchdogSec=", "StateDirectory=lkbridge", "ConfigurationDirectory=lkbridge",
                 "ConfigurationDirectoryMode=0755", "RuntimeDirectory=lkbridge",
                 "RestartPreventExitStatus=2", "LoadCredential=",
                 "MemoryDenyWriteExecute=yes", "NoNewPrivileges=yes"):
        assert line in text, line


@pytest.mark.e2e
async def test_livekit_works_under_write_xor_execute_and_no_new_privileges(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any]
) -> None:
    """MemoryDenyWriteExecute (as PR_SET_MDWE) and NoNewPrivileges must not break the native lib."""
    setpriv = _need("setpriv")
    agent = await scripted_agent()
    cmd = [setpriv, "--no-new-privs", sys.executable, "-m", "tests.support.hardened_child",
           livekit_server.url, livekit_server.api_key, agent.agent_name]
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LKB_TEST_API_SECRET": livekit_server.api_secret},
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    assert result["agent_connected"] and result["sent"] and result["error"] is None, result
    assert "You said: hello from a hardened process" in result["replies"], result
