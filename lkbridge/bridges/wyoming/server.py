"""One session's Wyoming server: `describe` → `info`, `transcript` → `handled` / `not-handled`."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from wyoming.asr import Transcript
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe
from wyoming.ping import Ping, Pong

from lkbridge.bridges.wyoming.answers import AnswerDesk, Outcome, Reason
from lkbridge.bridges.wyoming.protocol import (
    MAX_HEADER_BYTES,
    ProgramInfo,
    ProtocolError,
    read_event,
    write_event,
)
from lkbridge.config.models import WyomingConfig

log = structlog.get_logger(__name__)

MAX_CONVERSATION_ID = 200
"""Longer conversation ids from a client are not recorded."""


def conversation_id_of(context: Any) -> str | None:
    """HA's `context.conversation_id` when it is a sensible string, else None."""
    if not isinstance(context, dict):
        return None
    value = context.get("conversation_id")
    if isinstance(value, str) and 0 < len(value) <= MAX_CONVERSATION_ID and value.isprintable():
        return value
    return None


class WyomingServer:
    """Listens on one session's address; each connection is served by its own task.

    At most `max_connections` at once (more are told so and closed); a connection that sends
    nothing for `idle_timeout` seconds while no question is being answered is closed.
    """

    def __init__(self, settings: WyomingConfig, desk: AnswerDesk, program: ProgramInfo) -> None:
        self.settings = settings
        self.desk = desk
        self.program = program
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()  # serving tasks (ours)
        self._handlers: set[asyncio.Task[Any]] = set()  # the tasks asyncio started per client
        self._log = log.bind(session=desk.session_id)

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def address(self) -> tuple[str, int]:
        """The address actually listened on (the port is the real one when 0 was asked for)."""
        assert self._server is not None and self._server.sockets
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_client, self.settings.host, self.settings.port, limit=MAX_HEADER_BYTES
        )
        self._log.info("wyoming_listening", host=self.settings.host, port=self.address[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        serving = list(self._connections)
        for task in serving:
            task.cancel()
        # The handlers asyncio started close their sockets once their serving task is done.
        await asyncio.gather(*serving, *self._handlers, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
        self._log.info("wyoming_stopped")

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        peer = str(writer.get_extra_info("peername"))
        self._handlers.add(handler)
        try:
            if len(self._connections) >= self.settings.max_connections:
                self._log.warning("wyoming_connection_refused", peer=peer,
                                  reason="too many connections")  # fmt: skip
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        write_event(writer, Error(text="too many connections").event()), 2.0
                    )
                return
            # Served in a task of our own: cancelling it (at shutdown) ends this handler
            # normally, which asyncio's stream machinery expects of the tasks it starts.
            serving = asyncio.create_task(self._serve(reader, writer), name="wyoming-connection")
            self._connections.add(serving)
            try:
                await serving
            except asyncio.CancelledError:
                if handler.cancelling():
                    raise
            except (ConnectionError, TimeoutError) as exc:
                self._log.debug("wyoming_connection_lost", peer=peer, error=repr(exc))
            except Exception:
                self._log.exception("wyoming_connection_failed", peer=peer)
            finally:
                self._connections.discard(serving)
        finally:
            self._handlers.discard(handler)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer events in order until the client leaves, errs or idles out."""
        next_event: asyncio.Task[Event | None] | None = None
        try:
            while True:
                if next_event is None:
                    next_event = asyncio.create_task(read_event(reader), name="wyoming-read")
                try:
                    event = await asyncio.wait_for(
                        asyncio.shield(next_event), self.settings.idle_timeout
                    )
                except TimeoutError:
                    return
                except ProtocolError as exc:
                    self._log.info("wyoming_bad_event", error=str(exc))
                    await write_event(writer, Error(text=str(exc)).event())
                    return
                next_event = None
                if event is None:
                    return
                if Describe.is_type(event.type):
                    await write_event(writer, self.program.info().event())
                elif Ping.is_type(event.type):
                    await write_event(writer, Pong(text=Ping.from_event(event).text).event())
                elif Transcript.is_type(event.type):
                    next_event = asyncio.create_task(read_event(reader), name="wyoming-read")
                    outcome = await self._answer(event, next_event)
                    if outcome is None:
                        return  # the client left before its answer
                    await write_event(writer, self._reply(outcome, event))
                # Anything else (select-program, audio, events of newer versions) is ignored.
        finally:
            if next_event is not None and not next_event.done():
                next_event.cancel()
                with contextlib.suppress(BaseException):
                    await next_event

    async def _answer(
        self, event: Event, next_event: asyncio.Task[Event | None]
    ) -> Outcome | None:
        """Ask the desk; None when the connection closed while waiting (the ask is dropped)."""
        text = event.data.get("text")
        conversation_id = conversation_id_of(event.data.get("context"))
        if not isinstance(text, str) or not text.strip():
            return Outcome.failed(Reason.EMPTY)
        text = text.strip()
        if len(text) > self.settings.max_text_length:
            return Outcome.failed(Reason.TOO_LONG)
        self._log.info("wyoming_question", conversation_id=conversation_id, length=len(text))
        ask = asyncio.create_task(
            self.desk.ask(text, conversation_id=conversation_id), name="wyoming-ask"
        )
        try:
            await asyncio.wait({ask, next_event}, return_when=asyncio.FIRST_COMPLETED)
            if not ask.done():
                gone = next_event.exception() is not None or next_event.result() is None
                if gone:
                    self._log.info("wyoming_client_left", conversation_id=conversation_id)
                    return None
                await ask  # the client sent more meanwhile: it is read after the answer
            outcome = ask.result()
        finally:
            if not ask.done():
                ask.cancel()
                with contextlib.suppress(BaseException):
                    await ask
        self._log.info("wyoming_answered", handled=outcome.handled, message_id=outcome.message_id,
                       reason=outcome.reason.value if outcome.reason else None)  # fmt: skip
        return outcome

    @staticmethod
    def _reply(outcome: Outcome, event: Event) -> Event:
        context: dict[str, Any] = {}
        conversation_id = conversation_id_of(event.data.get("context"))
        if conversation_id is not None:
            context["conversation_id"] = conversation_id
        if outcome.handled:
            return Handled(text=outcome.text, context=context or None).event()
        if outcome.reason is not None:
            context["reason"] = outcome.reason.value
        return NotHandled(text=outcome.text, context=context or None).event()
