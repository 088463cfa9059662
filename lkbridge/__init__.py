"""lkbridge: LiveKit agent sessions on a message bus."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names and the module that defines each: the one list of the public API. They are
# imported on first access, so `import lkbridge` stays light (no livekit, aiohttp or structlog
# until something needs them).
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

# Derived from the table; tests/unit/test_public_api.py checks that the TYPE_CHECKING imports at
# the end name the same things, so the table is the list to edit.
__all__ = [*sorted(_EXPORTS), "__version__"]


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
    # `import X as X`: explicitly re-exported for type checkers (__all__ above is computed).
    # isort: off
    from lkbridge.errors import (
        InvalidTokenError as InvalidTokenError,
        LkbridgeError as LkbridgeError,
        TokenSourceError as TokenSourceError,
        TransportError as TransportError,
    )
    from lkbridge.messages import (
        MessageType as MessageType,
        ReceivedMessage as ReceivedMessage,
        SentMessage as SentMessage,
    )
    from lkbridge.session.agent import (
        Agent as Agent,
        AgentFailure as AgentFailure,
        AgentLifecycle as AgentLifecycle,
        AgentState as AgentState,
    )
    from lkbridge.session.core import Session as Session
    from lkbridge.session.events import (
        AgentChanged as AgentChanged,
        ConnectionState as ConnectionState,
        ConnectionStateChanged as ConnectionStateChanged,
        ErrorChanged as ErrorChanged,
        EventStream as EventStream,
        HistoryRestored as HistoryRestored,
        MessageReceived as MessageReceived,
        MessageUnanswered as MessageUnanswered,
        SessionError as SessionError,
        SessionErrorKind as SessionErrorKind,
        SessionEvent as SessionEvent,
    )
    from lkbridge.session.options import SessionOptions as SessionOptions
    from lkbridge.session.replies import ReplyOutcome as ReplyOutcome, ReplyStatus as ReplyStatus
    from lkbridge.session.state import SessionState as SessionState
    from lkbridge.tokens.sources import (
        CachingTokenSource as CachingTokenSource,
        CustomTokenSource as CustomTokenSource,
        DevelopmentTokenSource as DevelopmentTokenSource,
        EndpointTokenSource as EndpointTokenSource,
        LiteralTokenSource as LiteralTokenSource,
        MintedTokenSource as MintedTokenSource,
        TokenRequestOptions as TokenRequestOptions,
        TokenSourceConfigurable as TokenSourceConfigurable,
        TokenSourceFixed as TokenSourceFixed,
        TokenSourceResponse as TokenSourceResponse,
    )
    from lkbridge.transports.base import (
        MessageReceiver as MessageReceiver,
        MessageSender as MessageSender,
        ReceiverBase as ReceiverBase,
        RoomBinding as RoomBinding,
        RoomBound as RoomBound,
    )
    from lkbridge.transports.chat import TextMessageSender as TextMessageSender
    from lkbridge.transports.transcription import (
        TranscriptionStreamReceiver as TranscriptionStreamReceiver,
    )
    # isort: on
