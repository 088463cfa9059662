"""lkbridge: LiveKit agent sessions on a message bus."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names and the module that defines each. They are imported on first access, so
# `import lkbridge` stays light (no livekit, aiohttp or structlog until something needs them).
_EXPORTS: dict[str, str] = {
    # session
    "Session": "lkbridge.session",
    "SessionOptions": "lkbridge.session_options",
    "SessionState": "lkbridge.session_state",
    # state and events
    "ConnectionState": "lkbridge.session_events",
    "SessionError": "lkbridge.session_events",
    "SessionErrorKind": "lkbridge.session_events",
    "SessionEvent": "lkbridge.session_events",
    "ConnectionStateChanged": "lkbridge.session_events",
    "AgentChanged": "lkbridge.session_events",
    "MessageReceived": "lkbridge.session_events",
    "ErrorChanged": "lkbridge.session_events",
    "HistoryRestored": "lkbridge.session_events",
    "EventStream": "lkbridge.session_events",
    # agent
    "Agent": "lkbridge.agent",
    "AgentState": "lkbridge.agent",
    "AgentLifecycle": "lkbridge.agent",
    "AgentFailure": "lkbridge.agent",
    # messages
    "ReceivedMessage": "lkbridge.messages",
    "SentMessage": "lkbridge.messages",
    "MessageType": "lkbridge.messages",
    # tokens
    "TokenRequestOptions": "lkbridge.tokens",
    "TokenSourceResponse": "lkbridge.tokens",
    "TokenSourceFixed": "lkbridge.tokens",
    "TokenSourceConfigurable": "lkbridge.tokens",
    "LiteralTokenSource": "lkbridge.tokens",
    "EndpointTokenSource": "lkbridge.tokens",
    "DevelopmentTokenSource": "lkbridge.tokens",
    "MintedTokenSource": "lkbridge.tokens",
    "CustomTokenSource": "lkbridge.tokens",
    "CachingTokenSource": "lkbridge.tokens",
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
    "MintedTokenSource",
    "ReceivedMessage",
    "ReceiverBase",
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
    from lkbridge.agent import Agent, AgentFailure, AgentLifecycle, AgentState
    from lkbridge.errors import InvalidTokenError, LkbridgeError, TokenSourceError, TransportError
    from lkbridge.messages import MessageType, ReceivedMessage, SentMessage
    from lkbridge.session import Session
    from lkbridge.session_events import (
        AgentChanged,
        ConnectionState,
        ConnectionStateChanged,
        ErrorChanged,
        EventStream,
        HistoryRestored,
        MessageReceived,
        SessionError,
        SessionErrorKind,
        SessionEvent,
    )
    from lkbridge.session_options import SessionOptions
    from lkbridge.session_state import SessionState
    from lkbridge.tokens import (
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
