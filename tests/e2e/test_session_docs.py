"""The runnable example in docs/session.md really runs against the server and an agent."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.livekit_server import LiveKitServer

pytestmark = pytest.mark.e2e

DOC = Path(__file__).resolve().parents[2] / "docs" / "session.md"


def example_source() -> str:
    text = DOC.read_text()
    section = text.split("## A runnable example", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "docs/session.md lost its runnable example"
    return match.group(1)


async def test_the_documented_example_talks_to_the_agent(
    livekit_server: LiveKitServer, scripted_agent: Callable[..., Any], tmp_path: Path
) -> None:
    agent = await scripted_agent()
    script = tmp_path / "talk.py"
    script.write_text(example_source())
    env = dict(
        os.environ,
        LIVEKIT_URL=livekit_server.url,
        LIVEKIT_API_KEY=livekit_server.api_key,
        LIVEKIT_API_SECRET=livekit_server.api_secret,
        AGENT_NAME=agent.agent_name,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        "Hello",
        "docs",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    output = f"stdout: {stdout.decode()!r}\nstderr: {stderr.decode()[-2000:]}"
    assert proc.returncode == 0, output
    assert stdout.decode().rstrip().endswith("agent: You said: Hello docs"), output
    job = await agent.wait_for_job(timeout=5)
    assert (await asyncio.wait_for(job.chat.get(), 5)).text == "Hello docs"
