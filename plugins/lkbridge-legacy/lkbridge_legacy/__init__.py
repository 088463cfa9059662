"""lkbridge-legacy: the legacy-chat sender and legacy-transcription receiver, as an lkbridge plugin."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lkbridge.hookspecs import RegisterTransport, TransportContext, hookimpl

__version__ = "0.1.0"

CHAT_OPTIONS = ("topic",)


def _check_options(name: str, options: Mapping[str, Any], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        listed = ", ".join(known) or "none"
        raise ValueError(f"{name}: unknown option {unknown[0]!r}; known: {listed}")


def make_legacy_chat(ctx: TransportContext) -> Any:
    """Factory for `legacy-chat`: option `topic` (default lk-chat-topic)."""
    from lkbridge_legacy.chat import LEGACY_CHAT_TOPIC, LegacyChatSender

    _check_options("legacy-chat", ctx.options, CHAT_OPTIONS)
    topic = ctx.options.get("topic", LEGACY_CHAT_TOPIC)
    if not isinstance(topic, str) or not topic:
        raise ValueError("legacy-chat: topic: expected a non-empty string")
    return LegacyChatSender(topic=topic)


def make_legacy_transcription(ctx: TransportContext) -> Any:
    """Factory for `legacy-transcription` (no options)."""
    from lkbridge_legacy.transcription import LegacyTranscriptionReceiver

    _check_options("legacy-transcription", ctx.options, ())
    return LegacyTranscriptionReceiver()


@hookimpl
def register_transports(register: RegisterTransport) -> None:
    """Called once when lkbridge loads the plugin; sessions then name the transports in TOML."""
    register("legacy-chat", make_legacy_chat, sender=True, receiver=True)
    register("legacy-transcription", make_legacy_transcription, receiver=True)
