"""Inside the test container: a LiveKit server on the veth test address and a scripted agent."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from devstack.agent import ScriptedAgent
from devstack.livekit_server import LiveKitServer


async def main(addr: str, agent_name: str, ready_file: Path) -> None:
    server = LiveKitServer(
        addr=addr, log_dir=Path("/var/log/lkb-stack"),
        binary=Path("/usr/local/bin/livekit-server"),
    )
    server.start()
    agent = ScriptedAgent(
        url=server.url, api_key=server.api_key, api_secret=server.api_secret,
        agent_name=agent_name,
    )
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # The secret goes to the driver through a root-only file (as an admin would write it).
    fd = os.open(ready_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"url": server.url, "api_key": server.api_key,
                   "api_secret": server.api_secret}, handle)
    try:
        await stop.wait()
    finally:
        await agent.aclose()
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
