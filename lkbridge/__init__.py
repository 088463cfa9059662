"""lkbridge: LiveKit agent sessions on a message bus."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names and the module that defines each. They are imported on first access, so
# `import lkbridge` stays light (no livekit, aiohttp or structlog until something needs them).
_EXPORTS: dict[str, str] = {
    # session
    "Session": "lkbridge.session.core",
    "SessionOptions": "lkbridge.session.options",
    "SessionState": "lkbridge.session.state",
    # state and events
    "ConnectionState": "lkbridge.session.events",
    "SessionError": "lkbridge.session.events",
    "SessionErrorKind": "lkbridge.session.events",
    "SessionEvent": "lkbridge.session.events",
    "ConnectionStateChanged": "lkbridge.session.events",
    "AgentChanged": "lkbridge.session.events",
    "MessageReceived": "lkbridge.session.events",
    "MessageUnanswered": "lkbridge.session.events",
    "ReplyOutcome": "lkbridge.session.replies",
    "ReplyStatus": "lkbridge.session.replies",
    "ErrorChanged": "lkbridge.session.events",
    "HistoryRestored": "lkbridge.session.events",
    "EventStream": "lkbridge.session.events",
    # agent
    "Agent": "lkbridge.session.agent",
    "AgentState": "lkbridge.session.agent",
    "AgentLifecycle": "lkbridge.session.agent",
    "AgentFailure": "lkbridge.session.agent",
    # messages
    "ReceivedMessage": "lkbridge.messages",
    "SentMessage": "lkbridge.messages",
    "MessageType": "lkbridge.messages",
    # tokens
    "TokenRequestOptions": "lkbridge.tokens.sources",
    "TokenSourceResponse": "lkbridge.tokens.sources",
    "TokenSourceFixed": "lkbridge.tokens.sources",
    "TokenSourceConfigurable": "lkbridge.tokens.sources",
    "LiteralTokenSource": "lkbridge.tokens.sources",
    "EndpointTokenSource": "lkbridge.tokens.sources",
    "DevelopmentTokenSource": "lkbridge.tokens.sources",
    "MintedTokenSource": "lkbridge.tokens.sources",
    "CustomTokenSource": "lkbridge.tokens.sources",
    "CachingTokenSource": "lkbridge.tokens.sources",
    # transports
    "MessageSender": "lkbridge.transports.base",
    "MessageReceiver": "lkbridge.transports.base",
    "RoomBinding": "lkbridge.transports.base",
    "RoomBound": "lkbridge.transports.base",
    "ReceiverBase": "lkbridge.transports.base",
    "TextMessageSender": "lkbridge.transports.chat",
    "TranscriptionStreamReceiver": "lkbridge.transports.transcription",
    # errors
    "LkbridgeError": "lkbridge.errors",
    "TokenSourceError": "lkbridge.errors",
    "InvalidTokenError": "lkbridge.errors",
    "TransportError": "lkbridge.errors",
}

__all__ = [
    "Agent",
    "AgentChanged",
    "AgentFailure",
    "AgentLifecycle",
    "AgentState",
    "CachingTokenSource",
    "ConnectionState",
    "ConnectionStateChanged",
    "CustomTokenSource",
    "DevelopmentTokenSource",
    "EndpointTokenSource",
    "ErrorChanged",
    "EventStream",
    "HistoryRestored",
    "InvalidTokenError",
    "LiteralTokenSource",
    "LkbridgeError",
    "MessageReceived",
    "MessageReceiver",
    "MessageSender",
    "MessageType",
    "MessageUnanswered",
    "MintedTokenSource",
    "ReceivedMessage",
    "ReceiverBase",
    "ReplyOutcome",
    "ReplyStatus",
    "RoomBinding",
    "RoomBound",
    "SentMessage",
    "Session",
    "SessionError",
    "SessionErrorKind",
    "SessionEvent",
    "SessionOptions",
    "SessionState",
    "TextMessageSender",
    "TokenRequestOptions",
    "TokenSourceConfigurable",
    "TokenSourceError",
    "TokenSourceFixed",
    "TokenSourceResponse",
    "TranscriptionStreamReceiver",
    "TransportError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lkbridge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from lkbridge.errors import InvalidTokenError, LkbridgeError, TokenSourceError, TransportError
    from lkbridge.messages import MessageType, ReceivedMessage, SentMessage
    from lkbridge.session.agent import Agent, AgentFailure, AgentLifecycle, AgentState
    from lkbridge.session.core import Session
    from lkbridge.session.events import (
        AgentChanged,
        ConnectionState,
        ConnectionStateChanged,
        ErrorChanged,
        EventStream,
        HistoryRestored,
        MessageReceived,
        MessageUnanswered,
        SessionError,
        SessionErrorKind,
        SessionEvent,
    )
    from lkbridge.session.options import SessionOptions
    from lkbridge.session.replies import ReplyOutcome, ReplyStatus
    from lkbridge.session.state import SessionState
    from lkbridge.tokens.sources import (
        CachingTokenSource,
        CustomTokenSource,
        DevelopmentTokenSource,
        EndpointTokenSource,
        LiteralTokenSource,
        MintedTokenSource,
        TokenRequestOptions,
        TokenSourceConfigurable,
        TokenSourceFixed,
        TokenSourceResponse,
    )
    from lkbridge.transports.base import (
        MessageReceiver,
        MessageSender,
        ReceiverBase,
        RoomBinding,
        RoomBound,
    )
    from lkbridge.transports.chat import TextMessageSender
    from lkbridge.transports.transcription import TranscriptionStreamReceiver
