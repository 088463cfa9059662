"""Wyoming framing with bounds: read events of bounded size, write events, the info we offer."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from wyoming.event import Event, async_write_event
from wyoming.info import Attribution, HandleModel, HandleProgram, Info

from lkbridge import __version__

MAX_HEADER_BYTES = 16_384
"""Longest header line (JSON) accepted from a client."""
MAX_DATA_BYTES = 65_536
"""Largest `data` section accepted from a client (a transcript's text lives here)."""
MAX_PAYLOAD_BYTES = 65_536
"""Largest binary payload accepted (and skipped): a handle service takes no audio."""

WRITE_TIMEOUT = 10.0
"""Seconds to hand one event to a client that stops reading; then the connection is dropped."""

ATTRIBUTION_URL = "https://github.com/lkbridge/lkbridge"


class ProtocolError(Exception):
    """The client sent something that is not a Wyoming event within our bounds."""


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"{key}: expected a non-negative integer")
    if value > limit:
        raise ProtocolError(f"{key}: {value} bytes is more than the limit of {limit}")
    return value


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None at end of stream; raises ProtocolError for anything malformed.

    The reader must have been made with `limit=MAX_HEADER_BYTES` so an endless line is refused.
    """
    try:
        line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError) as exc:
        raise ProtocolError(f"header line longer than {MAX_HEADER_BYTES} bytes") from exc
    if not line:
        return None
    if not line.endswith(b"\n"):
        return None  # the client went away in the middle of a line
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise ProtocolError("header is not JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("header: expected an object with a string `type`")
    data = header.get("data") or {}
    if not isinstance(data, dict):
        raise ProtocolError("data: expected an object")
    data_length = _length(header, "data_length", MAX_DATA_BYTES)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD_BYTES)
    try:
        if data_length:
            extra = json.loads(await reader.readexactly(data_length))
            if not isinstance(extra, dict):
                raise ProtocolError("data: expected an object")
            data = {**data, **extra}
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        return None
    except ValueError as exc:
        raise ProtocolError("data is not JSON") from exc
    return Event(type=header["type"], data=data, payload=payload)


async def write_event(writer: asyncio.StreamWriter, event: Event) -> None:
    """Write one event (the reference implementation's encoding); bounded by WRITE_TIMEOUT."""
    await asyncio.wait_for(async_write_event(event, writer), WRITE_TIMEOUT)


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    """What `describe` tells a client about one session's handle program."""

    name: str
    session_id: str
    languages: tuple[str, ...]

    def info(self) -> Info:
        attribution = Attribution(name="lkbridge", url=ATTRIBUTION_URL)
        description = f"LiveKit agent session {self.session_id!r} through lkbridge"
        model = HandleModel(
            name=self.session_id,
            attribution=attribution,
            installed=True,
            description=description,
            version=__version__,
            languages=list(self.languages),
        )
        program = HandleProgram(
            name=self.name,
            attribution=attribution,
            installed=True,
            description=description,
            version=__version__,
            models=[model],
        )
        return Info(handle=[program])
