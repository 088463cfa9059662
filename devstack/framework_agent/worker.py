"""A text-only test agent on the real LiveKit Agents framework, with a deterministic offline LLM.

Run with the agent venv's python (it pins its own `livekit` rtc); imports nothing from lkbridge:

    LIVEKIT_URL=ws://198.18.0.1:7880 LIVEKIT_API_KEY=devkey LIVEKIT_API_SECRET=secret \\
        .venv-agent/bin/python devstack/framework_agent/worker.py --agent-name echo

It registers for explicit dispatch under --agent-name and prints `REGISTERED <worker id>` on
stdout once the server has accepted it. Each user text gets the reply `You said: <text>`,
streamed by the model in word-sized chunks. Switches in the user's text:

    [instant]    no pause between chunks
    [think N]    think N seconds (0..60) before the first chunk
    [slow N]     N seconds (0..10) between chunks
    [silent]     no reply at all
    [leave]      reply "Goodbye.", then leave the room on purpose

Job metadata (the session's agent_metadata, a JSON object, optional) sets defaults:
{"chunk_delay": seconds, "think": seconds}.
Nothing here reaches any address but the LiveKit URL: no STT/TTS/VAD, no turn-detector or
inference gateway, no model files, no telemetry (the framework sends that only to LiveKit
Cloud URLs). Checked with `strace -f -e trace=connect,sendto`: connections go only to the
test server; the one other connect() is libwebrtc's usual UDP route probe (no packet sent).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import re
import sys
from typing import Any

# Set before the framework is imported: never preload local inference weights.
os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentServer,
    AgentSession,
    APIConnectOptions,
    JobContext,
    JobExecutorType,
    llm,
    room_io,
    utils,
)

log = logging.getLogger("framework_agent")

SWITCH = re.compile(r"\[(instant|silent|leave|think|slow)(?:\s+([0-9]+(?:\.[0-9]+)?))?\]")
DEFAULT_CHUNK_DELAY = 0.02


def reply_text(user_text: str) -> str:
    """The deterministic answer to one user text."""
    return f"You said: {user_text}"


def word_chunks(text: str) -> list[str]:
    """Cut text the way a model streams deltas: the first word, then each ` word`."""
    return re.findall(r"\s*\S+", text) or [text]


class Plan:
    """What the model does with one user text, from its switches and the job's defaults."""

    def __init__(self, text: str, defaults: dict[str, float]) -> None:
        self.think = defaults.get("think", 0.0)
        self.chunk_delay = defaults.get("chunk_delay", DEFAULT_CHUNK_DELAY)
        self.silent = False
        self.leave = False
        for name, number in SWITCH.findall(text):
            value = float(number) if number else 0.0
            if name == "instant":
                self.chunk_delay = 0.0
                self.think = 0.0
            elif name == "silent":
                self.silent = True
            elif name == "leave":
                self.leave = True
            elif name == "think":
                self.think = min(max(value, 0.0), 60.0)
            elif name == "slow":
                self.chunk_delay = min(max(value, 0.0), 10.0)
        self.reply = "Goodbye." if self.leave else reply_text(text)


def last_user_text(chat_ctx: llm.ChatContext) -> str:
    for item in reversed(chat_ctx.items):
        if getattr(item, "type", None) == "message" and getattr(item, "role", None) == "user":
            return item.text_content or ""
    return ""


class ScriptedLLM(llm.LLM):
    """An offline model: its answer is a pure function of the last user message."""

    def __init__(self, defaults: dict[str, float], on_leave: Any) -> None:
        super().__init__()
        self.defaults = defaults
        self.on_leave = on_leave

    @property
    def model(self) -> str:
        return "scripted-echo"

    @property
    def provider(self) -> str:
        return "lkbridge-tests"

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[Any] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: Any,
    ) -> llm.LLMStream:
        return ScriptedStream(self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options)


class ScriptedStream(llm.LLMStream):
    async def _run(self) -> None:
        assert isinstance(self._llm, ScriptedLLM)
        plan = Plan(last_user_text(self._chat_ctx), self._llm.defaults)
        if plan.think:
            await asyncio.sleep(plan.think)
        if plan.silent:
            return
        request_id = utils.shortuuid("scripted_")
        for i, piece in enumerate(word_chunks(plan.reply)):
            if i and plan.chunk_delay:
                await asyncio.sleep(plan.chunk_delay)
            self._event_ch.send_nowait(
                llm.ChatChunk(id=request_id, delta=llm.ChoiceDelta(role="assistant", content=piece))
            )
        if plan.leave:
            self._llm.on_leave()


def job_defaults(metadata: str) -> dict[str, float]:
    try:
        data = json.loads(metadata) if metadata else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    return {
        key: float(data[key])
        for key in ("chunk_delay", "think")
        if isinstance(data.get(key), int | float) and 0 <= data[key] <= 60
    }


async def entrypoint(ctx: JobContext) -> None:
    defaults = job_defaults(ctx.job.metadata)
    await ctx.connect()
    leaving = asyncio.Event()

    session: AgentSession[None] = AgentSession(
        llm=ScriptedLLM(defaults, leaving.set),
        stt=None,
        tts=None,
        vad=None,
        turn_handling={"turn_detection": "manual"},
        user_away_timeout=None,
    )
    await session.start(
        agent=Agent(instructions="Repeat what the user said."),
        room=ctx.room,
        room_options=room_io.RoomOptions(
            text_input=True, audio_input=False, audio_output=False, text_output=True
        ),
        record=False,
    )

    async def leave_when_asked() -> None:
        await leaving.wait()
        # let the goodbye reach the room, then leave on purpose
        await asyncio.sleep(0.3)
        log.info("leaving the room on request", extra={"room": ctx.room.name})
        ctx.shutdown(reason="asked to leave")

    task = asyncio.create_task(leave_when_asked(), name="framework_agent.leave")
    ctx.add_shutdown_callback(lambda: _cancel(task))


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()


def _no_load() -> float:
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent-name", required=True)
    parser.add_argument("--url", default=os.environ.get("LIVEKIT_URL", ""))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    server = AgentServer(
        # One process per job, as in production: rtc's FFI client serves one event loop, and
        # two jobs connecting at once from threads of one process can wedge it.
        job_executor_type=JobExecutorType.PROCESS,
        num_idle_processes=1,
        load_threshold=math.inf,
        # Report no load: the server skips a worker whose reported (CPU) load is high, and the
        # tests run it beside busy-loop processes on purpose.
        load_fnc=_no_load,
        ws_url=args.url,
        host="127.0.0.1",
        port=0,
        log_level=args.log_level.upper(),
    )
    server.rtc_session(entrypoint, agent_name=args.agent_name)

    def registered(worker_id: str, *_: Any) -> None:
        print(f"REGISTERED {worker_id}", flush=True)

    server.on("worker_registered", registered)

    async def run() -> None:
        await server.run(devmode=True)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
