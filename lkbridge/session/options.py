"""SessionOptions, and plain-words descriptions of why a session could not connect."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc

from lkbridge.errors import LkbridgeError
from lkbridge.tokens.sources import excerpt, redact_url


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """How a session behaves; every field has a sensible default for a headless daemon."""

    agent_connect_timeout: float = 20.0
    """Seconds after connecting for a dispatched agent to become active (listening, thinking or
    speaking) before `agent.failure` becomes `timeout`; also how long text is held for it."""
    room_name: str | None = None
    """Pin the room (configurable token sources only); otherwise every start gets a fresh one."""
    hold_until_agent: bool = True
    """Hold text sent before the agent is active and deliver it once it is. False sends at once,
    as the reference SDKs do (text sent before the agent listens is then lost)."""
    send_queue_limit: int = 32
    """How many messages may wait in the outbox; one more fails at once with a sender error."""
    send_timeout: float = 10.0
    """Upper bound in seconds for the senders to deliver one message once it is due; a sender
    that takes longer is cancelled and the message fails with a sender error, so a stuck
    transport never wedges the messages behind it."""
    connect_timeout: float = 30.0
    """Upper bound in seconds for `room.connect()` (rtc retries internally)."""
    room_options: Callable[[], rtc.RoomOptions] | None = None
    """Factory for the `rtc.RoomOptions` of each new room (default: the rtc defaults)."""
    name: str | None = None
    """A label bound to this session's log lines (e.g. the daemon's session id)."""
    history_limit: int | None = None
    """Keep at most this many messages in `messages` (oldest first out); None keeps all."""
    reply_timeout: float | None = None
    """Seconds a sent message may wait for its final reply before a `MessageUnanswered` event
    with reason `timed_out` is emitted; None: never (interrupted/ended are always emitted)."""

    def __post_init__(self) -> None:
        if not self.agent_connect_timeout > 0:
            raise ValueError("agent_connect_timeout: must be positive")
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout: must be positive")
        if not self.send_timeout > 0:
            raise ValueError("send_timeout: must be positive")
        if self.history_limit is not None and self.history_limit < 0:
            raise ValueError("history_limit: must not be negative")
        if self.reply_timeout is not None and not self.reply_timeout > 0:
            raise ValueError("reply_timeout: must be positive")
        if self.send_queue_limit < 1:
            raise ValueError("send_queue_limit: must be at least 1")


_CLIENT_ERROR = re.compile(r"client error: (\d{3})[^-]*-\s*(.*)", re.S)


def describe_connect_error(message: str, url: str) -> str:
    """Plain words for an rtc.ConnectError: unreachable server, rejected token, or other."""
    where = f"the LiveKit server at {redact_url(url)}"
    text = excerpt(message, 300)  # also replaces the token the server echoes back
    client = _CLIENT_ERROR.search(text)
    if client is not None:
        status, detail = client.group(1), client.group(2)
        lowered = detail.lower()
        if "signature is invalid" in lowered:
            reason = "its signature does not match the server's key (wrong API key or secret?)"
        elif "expired" in lowered:
            reason = "the token has expired"
        elif "invalid authorization token" in lowered:
            reason = "it is not a valid token"
        else:
            reason = detail.rsplit("error: ", 1)[-1]
        return f"{where} rejected the token (HTTP {status}): {reason}"
    if "transport connection error" in text or "IO error" in text:
        return f"{where} is unreachable: {text.rsplit('IO error: ', 1)[-1]}"
    return f"could not connect to {where}: {text}"


def describe_failure(exc: BaseException, url: str | None, connect_timeout: float) -> str:
    """The cause text of a `connection` (or other) session error; never contains secrets."""
    if isinstance(exc, LkbridgeError):
        return str(exc)
    if isinstance(exc, rtc.ConnectError):
        return describe_connect_error(exc.message, url or "")
    if isinstance(exc, TimeoutError):
        where = redact_url(url) if url else "the LiveKit server"
        return f"connecting to {where} did not finish within {connect_timeout:g} s"
    return f"{type(exc).__name__}: {excerpt(str(exc), 300)}"
