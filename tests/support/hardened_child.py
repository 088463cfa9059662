"""Run one Session round trip in a process restricted like the systemd unit (for the hardening test).

Usage: python -m tests.support.hardened_child URL API_KEY AGENT_NAME  (secret in LKB_TEST_API_SECRET)
Sets MemoryDenyWriteExecute's kernel equivalent (PR_SET_MDWE) before loading livekit, then
connects, waits for the agent, sends a text, and prints a JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed")


async def main(url: str, api_key: str, agent_name: str) -> dict[str, object]:
    from lkbridge import MintedTokenSource, Session, SessionOptions

    source = MintedTokenSource(url, api_key, os.environ["LKB_TEST_API_SECRET"])
    async with Session.with_agent(
        agent_name, token_source=source, options=SessionOptions(agent_connect_timeout=15)
    ) as session:
        await session.start()
        for _ in range(300):
            if session.agent.is_connected:
                break
            await asyncio.sleep(0.05)
        sent = await session.send_text("hello from a hardened process")
        for _ in range(300):
            if any(m.type.value == "agent_transcript" and m.final for m in session.messages):
                break
            await asyncio.sleep(0.05)
        return {
            "connection_state": session.connection_state.value,
            "agent_connected": session.agent.is_connected,
            "sent": sent is not None,
            "error": session.error.message if session.error else None,
            "replies": [m.text for m in session.messages if m.type.value == "agent_transcript"],
        }


if __name__ == "__main__":
    deny_write_execute()
    result = asyncio.run(main(*sys.argv[1:4]))
    print(json.dumps(result), flush=True)
