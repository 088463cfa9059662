"""A scripted LiveKit agent: a real worker dispatched by the server, behaving like the agents framework."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import structlog
from livekit import api, rtc
from livekit.protocol import agent as agent_pb

log = structlog.get_logger(__name__)

CHAT_TOPIC = "lk.chat"
TRANSCRIPTION_TOPIC = "lk.transcription"
SESSION_TOPIC = "lk.agent.session"
STATE_ATTRIBUTE = "lk.agent.state"
CLOSING_REASONS = {
    rtc.DisconnectReason.CLIENT_INITIATED,
    rtc.DisconnectReason.ROOM_DELETED,
    rtc.DisconnectReason.USER_REJECTED,
}
LINKABLE_KINDS = {
    rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
    rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
    rtc.ParticipantKind.PARTICIPANT_KIND_CONNECTOR,
}


def echo_reply(text: str) -> str:
    return f"You said: {text}"


def split_chunks(text: str, size: int) -> list[str]:
    """Cut text into model-delta-like chunks of at most size characters."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass(frozen=True)
class ChatMessage:
    sender: str
    text: str


@dataclass
class AgentJob:
    """One dispatched job: the agent's presence in one room."""

    job_id: str
    room_name: str
    identity: str
    owner: ScriptedAgent
    room: rtc.Room = field(default_factory=rtc.Room)
    chat: asyncio.Queue[ChatMessage] = field(default_factory=asyncio.Queue)
    linked_identity: str | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _reply_task: asyncio.Task[None] | None = None
    _chat_readers: asyncio.Queue[tuple[rtc.TextStreamReader, str]] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def join(self, url: str, token: str) -> None:
        self.room.register_text_stream_handler(CHAT_TOPIC, self._on_chat_stream)
        self.room.on("participant_connected", self._on_participant_connected)
        self.room.on("participant_disconnected", self._on_participant_disconnected)
        await self.room.connect(url, token)
        for participant in self.room.remote_participants.values():
            self._maybe_link(participant)
        opts = self.owner
        if opts.publish_initializing:
            await self.set_state("initializing")
        if opts.state_delay:
            await asyncio.sleep(opts.state_delay)
        if opts.initial_state is not None:
            await self.set_state(opts.initial_state)
        if opts.send_session_bytes:
            with contextlib.suppress(Exception):
                await self.room.local_participant.send_bytes(b"{}", topic=SESSION_TOPIC)

    def _maybe_link(self, participant: rtc.RemoteParticipant) -> None:
        if self.linked_identity is not None or participant.kind not in LINKABLE_KINDS:
            return
        if participant.attributes.get("lk.publish_on_behalf"):
            return
        self.linked_identity = participant.identity
        log.debug("agent_linked", room=self.room_name, participant=participant.identity)

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        self._maybe_link(participant)

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self.linked_identity or not self.owner.close_on_disconnect:
            return
        # The agents framework closes its session (and leaves) when the linked user leaves for
        # good: client-initiated, room deleted or user rejected; not on other reasons.
        reason = getattr(participant, "disconnect_reason", None)
        if reason is None or reason in CLOSING_REASONS:
            self._spawn(self.leave(), f"agent-leave-{self.room_name}")

    def _on_chat_stream(self, reader: rtc.TextStreamReader, sender: str) -> None:
        # One reader at a time, in arrival order, so messages are seen in the order sent.
        if self._chat_readers is None:
            self._chat_readers = asyncio.Queue()
            self._spawn(self._read_chats(self._chat_readers), f"agent-chat-{self.room_name}")
        self._chat_readers.put_nowait((reader, sender))

    async def _read_chats(self, readers: asyncio.Queue[tuple[rtc.TextStreamReader, str]]) -> None:
        while True:
            reader, sender = await readers.get()
            await self._read_chat(reader, sender)

    async def _read_chat(self, reader: rtc.TextStreamReader, sender: str) -> None:
        try:
            text = await reader.read_all()
        except rtc.StreamError:
            return
        if self.linked_identity is None and sender in self.room.remote_participants:
            self._maybe_link(self.room.remote_participants[sender])
        if sender != self.linked_identity:
            return  # like the framework: chat from anyone but the linked participant is dropped
        await self.chat.put(ChatMessage(sender=sender, text=text))
        if self.owner.reply is not None:
            answer = self.owner.reply(text)
            if answer is not None:
                if self._reply_task is not None:
                    self._reply_task.cancel()  # each new chat message interrupts the reply
                self._reply_task = self._spawn(self._answer(answer), f"agent-reply-{self.room_name}")

    async def _answer(self, text: str) -> None:
        await self.set_state("thinking")
        await self.say(text, chunk_size=self.owner.chunk_size, chunk_delay=self.owner.chunk_delay)
        await self.set_state("listening")

    async def set_state(self, state: str) -> None:
        await self.room.local_participant.set_attributes({STATE_ATTRIBUTE: state})

    async def say(
        self,
        text: str | Sequence[str],
        *,
        chunk_size: int = 8,
        chunk_delay: float = 0.0,
        final: bool = True,
        segment_id: str | None = None,
        abort_after: int | None = None,
        speaking_state: bool = True,
        final_at_open: bool = False,
    ) -> str:
        """Send agent speech as the framework does: one delta stream, final flag in the trailer.

        Returns the segment id. With abort_after, the agent disconnects from the room after that
        many chunks, so the receiver sees the stream end abnormally. With final_at_open the
        header already says final (what a receiver sees when rtc hands it a stream late).
        """
        chunks = split_chunks(text, chunk_size) if isinstance(text, str) else list(text)
        segment = segment_id or f"SG_{secrets.token_hex(6)}"
        writer = await self.room.local_participant.stream_text(
            topic=TRANSCRIPTION_TOPIC,
            attributes={
                "lk.segment_id": segment,
                "lk.transcription_final": "true" if final_at_open else "false",
            },
        )
        for index, chunk in enumerate(chunks):
            if index == 0 and speaking_state:
                await self.set_state("speaking")
            if abort_after is not None and index >= abort_after:
                await self.room.disconnect()
                return segment
            await writer.write(chunk)
            if chunk_delay:
                await asyncio.sleep(chunk_delay)
        await writer.aclose(attributes={"lk.transcription_final": "true" if final else "false"})
        return segment

    async def send_user_transcript(
        self, user_identity: str, texts: Sequence[str], *, final: bool = True,
        segment_id: str | None = None,
    ) -> str:
        """User speech as the framework sends it: short full-text streams sharing one segment id."""
        segment = segment_id or f"SG_{secrets.token_hex(6)}"
        for index, text in enumerate(texts):
            is_final = final and index == len(texts) - 1
            writer = await self.room.local_participant.stream_text(
                topic=TRANSCRIPTION_TOPIC,
                sender_identity=user_identity,
                attributes={
                    "lk.segment_id": segment,
                    "lk.transcription_final": "true" if is_final else "false",
                },
            )
            await writer.write(text)
            await writer.aclose()
        return segment

    async def leave(self) -> None:
        if self._reply_task is not None:
            self._reply_task.cancel()
        with contextlib.suppress(Exception):
            await self.room.disconnect()
        self.closed.set()

    async def aclose(self) -> None:
        await self.leave()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task


class ScriptedAgent:
    """A worker registered on the server's /agent endpoint that accepts and runs jobs."""

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        agent_name: str,
        *,
        initial_state: str | None = "listening",
        publish_initializing: bool = False,
        state_delay: float = 0.0,
        echo: bool = True,
        reply: Callable[[str], str | None] | None = None,
        accept: bool = True,
        join_delay: float = 0.0,
        chunk_size: int = 8,
        chunk_delay: float = 0.0,
        close_on_disconnect: bool = True,
        send_session_bytes: bool = True,
        rtc_identity_prefix: str = "agent",
    ) -> None:
        self.url = url
        self.agent_name = agent_name
        self._api_key = api_key
        self._api_secret = api_secret
        self.initial_state = initial_state
        self.publish_initializing = publish_initializing
        self.state_delay = state_delay
        self.reply = reply if reply is not None else (echo_reply if echo else None)
        self.accept = accept
        self.join_delay = join_delay
        self.chunk_size = chunk_size
        self.chunk_delay = chunk_delay
        self.close_on_disconnect = close_on_disconnect
        self.send_session_bytes = send_session_bytes
        self.identity_prefix = rtc_identity_prefix
        self.jobs: list[AgentJob] = []
        self.worker_id: str | None = None
        self._job_queue: asyncio.Queue[AgentJob] = asyncio.Queue()
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def _worker_token(self) -> str:
        token = api.AccessToken(self._api_key, self._api_secret).with_grants(
            api.VideoGrants(agent=True)
        )
        return token.to_jwt()

    async def start(self, timeout: float = 10.0) -> None:
        http_url = self.url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(
            f"{http_url}/agent",
            headers={"Authorization": f"Bearer {self._worker_token()}"},
            heartbeat=None,
        )
        register = agent_pb.WorkerMessage(
            register=agent_pb.RegisterWorkerRequest(
                type=agent_pb.JobType.JT_ROOM, agent_name=self.agent_name, version="lkbridge-scripted"
            )
        )
        await self._ws.send_bytes(register.SerializeToString())
        self._reader = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"scripted-agent-{self.agent_name}"
        )
        await asyncio.wait_for(self._registered.wait(), timeout)
        log.info("scripted_agent_registered", agent_name=self.agent_name, worker=self.worker_id)

    async def _read_loop(self) -> None:
        assert self._ws is not None
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.BINARY:
                continue
            msg = agent_pb.ServerMessage()
            msg.ParseFromString(frame.data)
            kind = msg.WhichOneof("message")
            if kind == "register":
                self.worker_id = msg.register.worker_id
                self._registered.set()
            elif kind == "availability":
                await self._on_availability(msg.availability.job)
            elif kind == "assignment":
                self._spawn(self._on_assignment(msg.assignment), f"agent-job-{msg.assignment.job.id}")
            elif kind == "termination":
                for job in self.jobs:
                    if job.job_id == msg.termination.job_id:
                        self._spawn(job.leave(), f"agent-terminate-{job.job_id}")

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, message: agent_pb.WorkerMessage) -> None:
        assert self._ws is not None
        await self._ws.send_bytes(message.SerializeToString())

    async def _on_availability(self, job: agent_pb.Job) -> None:
        identity = f"{self.identity_prefix}-{job.id[-10:]}"
        await self._send(
            agent_pb.WorkerMessage(
                availability=agent_pb.AvailabilityResponse(
                    job_id=job.id,
                    available=self.accept,
                    participant_identity=identity,
                    participant_name=self.agent_name,
                )
            )
        )

    async def _on_assignment(self, assignment: agent_pb.JobAssignment) -> None:
        if self.join_delay:
            await asyncio.sleep(self.join_delay)
        job = AgentJob(
            job_id=assignment.job.id,
            room_name=assignment.job.room.name,
            identity=f"{self.identity_prefix}-{assignment.job.id[-10:]}",
            owner=self,
        )
        self.jobs.append(job)
        try:
            await job.join(assignment.url or self.url, assignment.token)
        except Exception as exc:
            log.warning("scripted_agent_join_failed", room=job.room_name, error=str(exc))
            await self._send(
                agent_pb.WorkerMessage(
                    update_job=agent_pb.UpdateJobStatus(
                        job_id=job.job_id, status=agent_pb.JobStatus.JS_FAILED, error=str(exc)
                    )
                )
            )
            return
        await self._send(
            agent_pb.WorkerMessage(
                update_job=agent_pb.UpdateJobStatus(job_id=job.job_id, status=agent_pb.JobStatus.JS_RUNNING)
            )
        )
        await self._job_queue.put(job)

    async def wait_for_job(self, timeout: float = 10.0) -> AgentJob:
        """The next job this worker joined, in dispatch order."""
        return await asyncio.wait_for(self._job_queue.get(), timeout)

    async def aclose(self) -> None:
        for job in self.jobs:
            await job.aclose()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._http is not None:
            await self._http.close()

    async def __aenter__(self) -> ScriptedAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
