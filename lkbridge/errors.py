"""The exception hierarchy of lkbridge, and helpers that keep secrets out of error messages."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

_JWT_LIKE = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_EXCERPT_CHARS = 160


class LkbridgeError(Exception):
    """Base class of every error lkbridge raises on purpose."""


class TokenSourceError(LkbridgeError):
    """A token source could not produce credentials (HTTP failure, bad response, bad options).

    `status` is the HTTP status when an endpoint answered with one, else None. `body_excerpt`
    is a short, printable prefix of the response body (never the participant token).
    """

    def __init__(
        self, message: str, *, status: int | None = None, body_excerpt: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body_excerpt = body_excerpt


class InvalidTokenError(TokenSourceError):
    """A participant token is not usable: not a JWT, expired, or not valid yet."""


class TransportError(LkbridgeError):
    """A message sender or receiver failed."""


class NotConnectedError(TransportError):
    """A transport needs a connected room and there is none."""


class AgentUnavailableError(TransportError):
    """Held text could not be delivered because the agent never became active."""


class SendQueueFullError(TransportError):
    """Too many messages are already held waiting for the agent."""


class SessionClosedError(LkbridgeError):
    """The session was closed with aclose() and cannot be used any more."""


def redact_url(url: str) -> str:
    """The URL without user info, query or fragment (they may carry secrets)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid url>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def excerpt(text: str, limit: int = _EXCERPT_CHARS) -> str:
    """A short single-line, printable, token-free prefix of a response body."""
    cleaned = _JWT_LIKE.sub("<token>", text)
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in cleaned).split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
