"""The plugin hook specifications: set-up-time registrations of transports, token sources and bridges."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from lkbridge.bridges.hub import Bridge, Hub
    from lkbridge.config.models import Config

PROJECT_NAME = "lkbridge"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@dataclass(frozen=True)
class TransportContext:
    """What a transport factory is given when a session is built.

    session_id: the session's id ("" when the Session is used as a library).
    options: the session's `[sessions.<id>.transports.<name>]` table (read-only).
    services: daemon-provided services by name, e.g. "mqtt" (see docs/plugins.md); empty when
        the Session is used as a library.
    """

    session_id: str
    options: Mapping[str, Any] = field(default_factory=dict)
    services: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenSourceContext:
    """What a token source factory is given: the session id and its `[sessions.<id>.token]` options."""

    session_id: str
    options: Mapping[str, Any] = field(default_factory=dict)


TransportFactory = Callable[[TransportContext], Any]
"""Returns one object per session: a MessageSender, a MessageReceiver, or both at once."""

TokenSourceFactory = Callable[[TokenSourceContext], Any]
"""Returns a TokenSourceConfigurable or TokenSourceFixed for one session."""

BridgeFactory = Callable[["Hub", "Config"], "Bridge"]
"""Called as factory(hub, config) by the daemon; returns a Bridge (lkbridge.bridges.hub)."""


class RegisterTransport(Protocol):
    def __call__(
        self, name: str, factory: TransportFactory, *, sender: bool = ..., receiver: bool = ...
    ) -> None: ...


class RegisterTokenSource(Protocol):
    def __call__(self, name: str, factory: TokenSourceFactory) -> None: ...


class RegisterBridge(Protocol):
    def __call__(self, name: str, factory: BridgeFactory) -> None: ...


@hookspec
def register_transports(register: RegisterTransport) -> None:
    """Register message transports by name.

    Call ``register(name, factory, sender=True, receiver=False)`` once per transport. `sender`
    and `receiver` say what the object the factory returns can do; a session's TOML names it in
    `senders = [...]` and/or `receivers = [...]`. One object is made per session and used for
    both roles when both are asked for (so a sender can loop back what it sent).
    """


@hookspec
def register_token_sources(register: RegisterTokenSource) -> None:
    """Register token sources by name: ``register(name, factory)``.

    A session selects one with `[sessions.<id>.token] source = "<name>"`; the factory receives a
    TokenSourceContext whose options are the rest of that table.
    """


@hookspec
def register_bridges(register: RegisterBridge) -> None:
    """Register daemon-wide bridges: ``register(name, factory)``.

    The daemon calls ``factory(hub, config)`` once at start and enters the returned Bridge (an
    async context manager with ``wait_ready()`` and ``status()``, see lkbridge.bridges.hub); the
    bridge observes and commands sessions only through the hub API.
    """
