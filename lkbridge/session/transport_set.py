"""TransportSet: a session's senders and receivers, bound to each new room and pumped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from livekit import rtc

from lkbridge.log import get_logger
from lkbridge.messages import ReceivedMessage, SentMessage
from lkbridge.transports.base import MessageReceiver, MessageSender, RoomBinding, RoomBound
from lkbridge.transports.chat import TextMessageSender
from lkbridge.transports.transcription import TranscriptionStreamReceiver

log = get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class TransportSet:
    """Resolves the default transports (spec §2.1) and drives them for a session.

    Defaults: senders `[TextMessageSender]`, receivers `[that same TextMessageSender,
    TranscriptionStreamReceiver]`. Each distinct transport is bound and unbound once per room;
    each receiver is consumed by one pump task that hands messages to `on_message`.
    """

    def __init__(
        self,
        senders: Sequence[MessageSender] | None,
        receivers: Sequence[MessageReceiver] | None,
        *,
        on_message: Callable[[ReceivedMessage], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        text_sender = TextMessageSender()
        self.senders: list[MessageSender] = list(senders) if senders is not None else [text_sender]
        self.receivers: list[MessageReceiver] = (
            list(receivers)
            if receivers is not None
            else [text_sender, TranscriptionStreamReceiver()]
        )
        self.distinct: list[object] = []
        for transport in [*self.senders, *self.receivers]:
            if not any(transport is known for known in self.distinct):
                self.distinct.append(transport)
        self._on_message = on_message
        self._on_error = on_error
        self._pumps: list[asyncio.Task[Any]] = []
        self._lock = asyncio.Lock()
        self._bound_room: rtc.Room | None = None

    def start_pumps(self, spawn: Spawn) -> None:
        """Start consuming every receiver (once)."""
        if self._pumps:
            return
        for receiver in self.receivers:
            name = f"receiver.{type(receiver).__name__}"
            self._pumps.append(spawn(self._pump(receiver), name))

    async def _pump(self, receiver: MessageReceiver) -> None:
        iterator = receiver.messages()
        try:
            async for message in iterator:
                self._on_message(message)
        except Exception as exc:  # fatal for this receiver (Swift semantics)
            log.error("receiver_failed", receiver=type(receiver).__name__, error=repr(exc))
            self._on_error(exc)
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def send(self, message: SentMessage) -> None:
        """Every sender in order; the first failure propagates and stops the rest."""
        for sender in self.senders:
            await sender.send(message)

    async def bind(self, room: rtc.Room) -> None:
        """Attach every room-bound transport to a new room; failures go to `on_error`."""
        async with self._lock:
            binding = RoomBinding(room, self._on_error)
            self._bound_room = room
            for transport in self.distinct:
                if isinstance(transport, RoomBound):
                    try:
                        await transport.bind(binding)
                    except Exception as exc:
                        log.error(
                            "transport_bind_failed", transport=repr(transport), error=repr(exc)
                        )
                        self._on_error(exc)

    async def unbind(self, room: rtc.Room | None = None) -> bool:
        """Detach every transport from the bound room (only if it is `room`, when given)."""
        async with self._lock:
            if self._bound_room is None or (room is not None and room is not self._bound_room):
                return False
            self._bound_room = None
            for transport in self.distinct:
                if isinstance(transport, RoomBound):
                    try:
                        await transport.unbind()
                    except Exception as exc:
                        log.error(
                            "transport_unbind_failed", transport=repr(transport), error=repr(exc)
                        )
            return True

    async def aclose(self) -> None:
        """Unbind, then close every receiver (their message iterators end)."""
        await self.unbind()
        for transport in self.distinct:
            if isinstance(transport, MessageReceiver):
                try:
                    await transport.aclose()
                except Exception as exc:
                    log.error("receiver_close_failed", transport=repr(transport), error=repr(exc))
