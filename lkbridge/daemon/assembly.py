"""Builds a Session from a session's config: its token source and its transports, by plugin name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lkbridge.config.models import (
    DevelopmentTokenConfig,
    EndpointTokenConfig,
    LiteralTokenConfig,
    MintedTokenConfig,
    PluginTokenConfig,
    SessionConfig,
    TokenConfig,
)
from lkbridge.errors import LkbridgeError
from lkbridge.hookspecs import TokenSourceContext, TransportContext
from lkbridge.plugins.host import PluginHost
from lkbridge.session.core import Session
from lkbridge.session.options import SessionOptions
from lkbridge.tokens.sources import (
    CachingTokenSource,
    DevelopmentTokenSource,
    EndpointTokenSource,
    LiteralTokenSource,
    MintedTokenSource,
    TokenRequestOptions,
)
from lkbridge.transports.base import MessageReceiver, MessageSender


class AssemblyError(LkbridgeError):
    """A session could not be built from its config (unknown plugin name, bad plugin output)."""


def build_token_source(session_id: str, token: TokenConfig, plugins: PluginHost) -> Any:
    """The configured token source; secrets are resolved here, at the last moment."""
    if isinstance(token, MintedTokenConfig):
        return MintedTokenSource(
            token.url, token.api_key, token.api_secret.reveal(), identity=f"lkbridge-{session_id}"
        )
    if isinstance(token, LiteralTokenConfig):
        return LiteralTokenSource(token.server_url, token.participant_token.reveal())
    if isinstance(token, EndpointTokenConfig):
        headers = {name: secret.reveal() for name, secret in token.headers.items()}
        return CachingTokenSource(EndpointTokenSource(token.url, headers=headers))
    if isinstance(token, DevelopmentTokenConfig):
        return CachingTokenSource(DevelopmentTokenSource(token.sandbox_id, base_url=token.base_url))
    if isinstance(token, PluginTokenConfig):
        spec = plugins.token_sources.get(token.source)
        if spec is None:
            raise AssemblyError(f"no plugin provides the token source {token.source!r}")
        try:
            return spec.factory(TokenSourceContext(session_id=session_id, options=token.options))
        except Exception as exc:
            raise AssemblyError(
                f"token source {token.source!r} (plugin {spec.plugin}) failed: {exc}"
            ) from exc
    raise AssemblyError(f"unsupported token config {type(token).__name__}")


def build_transports(
    cfg: SessionConfig, plugins: PluginHost, services: Mapping[str, Any]
) -> tuple[list[MessageSender], list[MessageReceiver]]:
    """One object per named transport; used as sender and/or receiver as the config asks."""
    made: dict[str, Any] = {}
    for name in dict.fromkeys([*cfg.senders, *cfg.receivers]):
        spec = plugins.transports.get(name)
        if spec is None:
            raise AssemblyError(f"sessions.{cfg.id}: no plugin provides the transport {name!r}")
        if name in cfg.senders and not spec.can_send:
            raise AssemblyError(f"sessions.{cfg.id}.senders: transport {name!r} cannot send")
        if name in cfg.receivers and not spec.can_receive:
            raise AssemblyError(f"sessions.{cfg.id}.receivers: transport {name!r} cannot receive")
        ctx = TransportContext(
            session_id=cfg.id, options=cfg.transports.get(name, {}), services=services
        )
        try:
            made[name] = spec.factory(ctx)
        except Exception as exc:
            raise AssemblyError(
                f"sessions.{cfg.id}: transport {name!r} (plugin {spec.plugin}) failed: {exc}"
            ) from exc
    senders = [made[name] for name in cfg.senders]
    receivers = [made[name] for name in cfg.receivers]
    for name, obj in made.items():
        if name in cfg.senders and not isinstance(obj, MessageSender):
            raise AssemblyError(f"transport {name!r} made {type(obj).__name__}, not a MessageSender")
        if name in cfg.receivers and not isinstance(obj, MessageReceiver):
            raise AssemblyError(f"transport {name!r} made {type(obj).__name__}, not a MessageReceiver")
    return senders, receivers


def token_options(cfg: SessionConfig) -> TokenRequestOptions:
    return TokenRequestOptions(
        room_name=cfg.room_name,
        participant_name=cfg.participant_name,
        participant_identity=cfg.participant_identity,
        participant_metadata=cfg.participant_metadata,
        participant_attributes=dict(cfg.participant_attributes) or None,
        agent_name=cfg.agent_name,
        agent_metadata=cfg.agent_metadata,
    )


def build_session(
    cfg: SessionConfig,
    plugins: PluginHost,
    services: Mapping[str, Any] | None = None,
    *,
    history_limit: int | None = None,
) -> Session:
    """A Session for cfg; raises AssemblyError (or the secret's error) with a clear reason."""
    source = build_token_source(cfg.id, cfg.token, plugins)
    senders, receivers = build_transports(cfg, plugins, services or {})
    options = SessionOptions(
        agent_connect_timeout=cfg.agent_connect_timeout,
        reply_timeout=cfg.reply_timeout or None,
        room_name=cfg.room_name,
        name=cfg.id,
        history_limit=history_limit,
    )
    if isinstance(cfg.token, LiteralTokenConfig):
        return Session.from_fixed_token_source(
            source, options=options, senders=senders, receivers=receivers
        )
    return Session.from_configurable_token_source(
        source, token_options=token_options(cfg), options=options, senders=senders,
        receivers=receivers,
    )
