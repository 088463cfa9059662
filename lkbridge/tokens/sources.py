"""Token sources: where a session gets its server URL and participant token from."""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlsplit

from lkbridge.errors import LkbridgeError, TokenSourceError, excerpt, redact_url
from lkbridge.log import get_logger
from lkbridge.tokens.claims import (
    DEFAULT_TOLERANCE,
    check_token_usable,
    decode_jwt_unverified,
    token_dispatches_agent,
    token_is_valid,
)

log = get_logger(__name__)

__all__ = [
    "DEFAULT_TOLERANCE",
    "CachingTokenSource",
    "CustomTokenSource",
    "DevelopmentTokenSource",
    "EndpointTokenSource",
    "InvalidatingTokenSource",
    "LiteralTokenSource",
    "MintedTokenSource",
    "TokenRequestOptions",
    "TokenSourceConfigurable",
    "TokenSourceFixed",
    "TokenSourceResponse",
    "check_token_usable",
    "decode_jwt_unverified",
    "excerpt",
    "redact_url",
    "sanitize_sandbox_id",
    "token_dispatches_agent",
    "token_is_valid",
    "with_room_name",
]

DEVELOPMENT_BASE_URL = "https://cloud-api.livekit.io"
DEVELOPMENT_PATH = "/api/v2/sandbox/connection-details"


# --------------------------------------------------------------------------- options / response


@dataclass(frozen=True, slots=True)
class TokenRequestOptions:
    """What a configurable token source is asked for (spec §6.2); every field is optional."""

    room_name: str | None = None
    participant_name: str | None = None
    participant_identity: str | None = None
    participant_metadata: str | None = None
    participant_attributes: Mapping[str, str] | None = None
    agent_name: str | None = None
    agent_metadata: str | None = None
    agent_deployment: str | None = None

    def __post_init__(self) -> None:
        if self.participant_attributes is not None:
            # A private copy, so the options stay equal to what they were when compared.
            object.__setattr__(self, "participant_attributes", dict(self.participant_attributes))

    @property
    def has_agent(self) -> bool:
        """True when the options ask for an agent dispatch."""
        return any(
            v is not None for v in (self.agent_name, self.agent_metadata, self.agent_deployment)
        )

    def to_request(self) -> dict[str, Any]:
        """The snake_case JSON body of the standard token endpoint; `room_config` is always sent."""
        body: dict[str, Any] = {}
        for key in (
            "room_name",
            "participant_name",
            "participant_identity",
            "participant_metadata",
        ):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        if self.participant_attributes is not None:
            body["participant_attributes"] = dict(self.participant_attributes)
        room_config: dict[str, Any] = {}
        if self.has_agent:
            dispatch = {
                k: v
                for k, v in (
                    ("agent_name", self.agent_name),
                    ("metadata", self.agent_metadata),
                    ("deployment", self.agent_deployment),
                )
                if v is not None
            }
            room_config["agents"] = [dispatch]
        body["room_config"] = room_config
        return body

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_request(), sort_keys=True))


@dataclass(frozen=True, slots=True)
class TokenSourceResponse:
    """Credentials for one connection; the token never appears in repr()."""

    server_url: str
    participant_token: str = field(repr=False)
    participant_name: str | None = None
    room_name: str | None = None

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "token source") -> TokenSourceResponse:
        """Parse an endpoint answer; snake_case and camelCase keys are both accepted."""
        if not isinstance(data, Mapping):
            raise TokenSourceError(f"{origin} returned JSON that is not an object")

        def pick(snake: str, camel: str) -> Any:
            return data[snake] if data.get(snake) is not None else data.get(camel)

        server_url = pick("server_url", "serverUrl")
        token = pick("participant_token", "participantToken")
        missing = [
            name
            for name, value in (("server_url", server_url), ("participant_token", token))
            if not isinstance(value, str) or not value
        ]
        if missing:
            raise TokenSourceError(f"{origin} returned JSON without {' and '.join(missing)}")
        name = pick("participant_name", "participantName")
        room = pick("room_name", "roomName")
        return cls(
            server_url=server_url,
            participant_token=token,
            participant_name=name if isinstance(name, str) and name else None,
            room_name=room if isinstance(room, str) and room else None,
        )

    @property
    def dispatches_agent(self) -> bool:
        """True when the token's room configuration dispatches at least one agent."""
        return token_dispatches_agent(self.participant_token)


@runtime_checkable
class TokenSourceFixed(Protocol):
    """A source that decides the credentials itself: `fetch()` takes no options."""

    async def fetch(self) -> TokenSourceResponse: ...


@runtime_checkable
class TokenSourceConfigurable(Protocol):
    """A source that takes request options (room, participant, agent dispatch)."""

    async def fetch(self, options: TokenRequestOptions) -> TokenSourceResponse: ...


@runtime_checkable
class InvalidatingTokenSource(Protocol):
    """A source holding a cache that a session clears on end() and on unexpected disconnect."""

    def invalidate(self) -> None: ...


def _check_url(url: str, schemes: tuple[str, ...], what: str) -> str:
    if not isinstance(url, str) or urlsplit(url).scheme not in schemes or not urlsplit(url).netloc:
        raise ValueError(f"{what}: must be a {', '.join(s + '://' for s in schemes)} URL")
    return url


# --------------------------------------------------------------------------- sources


class LiteralTokenSource:
    """Fixed credentials given up front (both fixed and configurable; options are ignored)."""

    def __init__(
        self,
        server_url: str,
        participant_token: str,
        *,
        participant_name: str | None = None,
        room_name: str | None = None,
    ) -> None:
        self._response = TokenSourceResponse(
            server_url=server_url,
            participant_token=participant_token,
            participant_name=participant_name,
            room_name=room_name,
        )

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        return self._response

    def __repr__(self) -> str:
        return f"LiteralTokenSource(server_url={self._response.server_url!r})"


class EndpointTokenSource:
    """The standard token-endpoint protocol (spec §6.3): POST JSON options, get credentials back."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.url = _check_url(url, ("http", "https"), "token endpoint url")
        self.method = method.upper()
        self._headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={redact_url(self.url)!r}, method={self.method!r})"

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        import aiohttp  # deferred: importing lkbridge must stay light

        body = (options or TokenRequestOptions()).to_request()
        where = f"token endpoint {redact_url(self.url)}"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as http,
                http.request(self.method, self.url, json=body, headers=self._headers) as resp,
            ):
                status, reason = resp.status, resp.reason or ""
                if not 200 <= status < 300:
                    # The body is never read: an error says which server and what status, never
                    # what it answered (an outsider must not read other servers through us).
                    raise TokenSourceError(
                        f"{where} answered HTTP {status} {reason}".rstrip(), status=status
                    )
                raw = await read_capped(resp.content, MAX_RESPONSE_BYTES, resp.content_length)
        except TimeoutError as exc:
            raise TokenSourceError(f"{where} did not answer within {self.timeout:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            detail = exc.os_error.strerror or str(exc.os_error)
            raise TokenSourceError(f"{where} is unreachable: {detail}") from exc
        except aiohttp.ClientError as exc:
            raise TokenSourceError(f"{where} failed: {type(exc).__name__}") from exc
        if raw is None:
            raise TokenSourceError(
                f"{where} answered with more than {MAX_RESPONSE_BYTES} bytes; refused",
                status=status,
            )
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise TokenSourceError(
                f"{where} returned a body that is not JSON (HTTP {status}, {len(raw)} bytes)",
                status=status,
            ) from exc
        return TokenSourceResponse.from_dict(data, origin=where)


MAX_RESPONSE_BYTES = 65_536
"""The largest token-endpoint answer read; a token response is well under 4 KB."""


class _Readable(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def read_capped(stream: _Readable, limit: int, length: int | None = None) -> bytes | None:
    """Read a body of at most limit bytes as a stream; None as soon as it is larger."""
    if length is not None and length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await stream.read(min(16_384, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)


def sanitize_sandbox_id(sandbox_id: str) -> str:
    """Strip leading and trailing non-alphanumeric characters, as the SDKs do."""
    cleaned = re.sub(r"^[^0-9A-Za-z]+|[^0-9A-Za-z]+$", "", sandbox_id or "")
    if not cleaned:
        raise ValueError("sandbox id: must contain letters or digits")
    return cleaned


class DevelopmentTokenSource(EndpointTokenSource):
    """LiveKit Cloud's development token server ("sandbox"), identified by a sandbox id."""

    def __init__(
        self, sandbox_id: str, *, base_url: str = DEVELOPMENT_BASE_URL, timeout: float = 10.0
    ) -> None:
        base = _check_url(base_url, ("http", "https"), "development base url").rstrip("/")
        super().__init__(
            base + DEVELOPMENT_PATH,
            headers={"X-Sandbox-ID": sanitize_sandbox_id(sandbox_id)},
            timeout=timeout,
        )


class MintedTokenSource:
    """Mints tokens locally from an API key and secret with livekit-api (self-hosted servers).

    Each fetch uses a fresh random room name unless the options pin one, so a restarted session
    never rejoins a room an agent has already left. The agent dispatch goes into the token's
    room configuration.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        api_secret: str,
        *,
        identity: str | None = None,
        name: str | None = None,
        ttl: timedelta = timedelta(hours=1),
        room_prefix: str = "lkbridge-",
    ) -> None:
        self.url = _check_url(url, ("ws", "wss", "http", "https"), "server url")
        if not api_key:
            raise ValueError("api_key: must not be empty")
        if not api_secret:
            raise ValueError("api_secret: must not be empty")
        if ttl <= timedelta(0):
            raise ValueError("ttl: must be positive")
        self.api_key = api_key
        self._api_secret = api_secret
        self.identity = identity or f"lkbridge-{secrets.token_hex(4)}"
        self.name = name
        self.ttl = ttl
        self.room_prefix = room_prefix

    def __repr__(self) -> str:
        return (
            f"MintedTokenSource(url={redact_url(self.url)!r}, api_key={self.api_key!r}, "
            f"identity={self.identity!r})"
        )

    def new_room_name(self) -> str:
        return f"{self.room_prefix}{secrets.token_hex(6)}"

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        from livekit import api  # deferred: importing lkbridge must stay light

        options = options or TokenRequestOptions()
        room = options.room_name or self.new_room_name()
        identity = options.participant_identity or self.identity
        name = options.participant_name or self.name
        token = (
            api.AccessToken(self.api_key, self._api_secret)
            .with_identity(identity)
            .with_ttl(self.ttl)
            .with_grants(api.VideoGrants(room_join=True, room=room))
        )
        if name:
            token = token.with_name(name)
        if options.participant_metadata is not None:
            token = token.with_metadata(options.participant_metadata)
        if options.participant_attributes:
            token = token.with_attributes(dict(options.participant_attributes))
        if options.has_agent:
            dispatch = api.RoomAgentDispatch(
                agent_name=options.agent_name or "",
                metadata=options.agent_metadata or "",
                deployment=options.agent_deployment or "",
            )
            token = token.with_room_config(api.RoomConfiguration(agents=[dispatch]))
        try:
            jwt = token.to_jwt()
        except Exception as exc:  # pyjwt / protobuf errors; never echo the secret
            raise TokenSourceError(f"minting a token failed: {type(exc).__name__}") from exc
        log.debug("token_minted", room=room, identity=identity, agent=options.agent_name)
        return TokenSourceResponse(
            server_url=self.url, participant_token=jwt, participant_name=name, room_name=room
        )


CustomFetch = Callable[
    [TokenRequestOptions],
    "TokenSourceResponse | Mapping[str, Any] | Awaitable[TokenSourceResponse | Mapping[str, Any]]",
]


class CustomTokenSource:
    """Wraps a callable `(options) -> response` (sync or async); a dict response is parsed."""

    def __init__(self, fn: CustomFetch) -> None:
        if not callable(fn):
            raise TypeError("CustomTokenSource needs a callable")
        self._fn = fn

    def __repr__(self) -> str:
        return f"CustomTokenSource({getattr(self._fn, '__qualname__', type(self._fn).__name__)})"

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        try:
            result: Any = self._fn(options or TokenRequestOptions())
            if inspect.isawaitable(result):
                result = await result
        except LkbridgeError:
            raise
        except Exception as exc:
            raise TokenSourceError(
                f"custom token source failed: {type(exc).__name__}: {exc}"
            ) from exc
        if isinstance(result, TokenSourceResponse):
            return result
        return TokenSourceResponse.from_dict(result, origin="custom token source")


Validator = Callable[[TokenRequestOptions, TokenSourceResponse], bool]


def default_validator(options: TokenRequestOptions, response: TokenSourceResponse) -> bool:
    """The SDKs' rule: reuse a token while it is valid for at least another 60 s."""
    return token_is_valid(response.participant_token)


class CachingTokenSource:
    """Caches one (options, response) pair and shares one in-flight fetch per equal options.

    `invalidate()` drops the cache; a fetch already under way when it is called still answers
    its callers but is not stored.
    """

    def __init__(self, wrapped: TokenSourceConfigurable, *, validator: Validator | None = None):
        self.wrapped = wrapped
        self._validator = validator or default_validator
        self._cached: tuple[TokenRequestOptions, TokenSourceResponse] | None = None
        self._inflight: dict[TokenRequestOptions, asyncio.Task[TokenSourceResponse]] = {}
        self._generation = 0

    def __repr__(self) -> str:
        return f"CachingTokenSource({self.wrapped!r})"

    def cached_response(self) -> TokenSourceResponse | None:
        return self._cached[1] if self._cached else None

    def invalidate(self) -> None:
        self._cached = None
        self._generation += 1

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        options = options or TokenRequestOptions()
        if self._cached is not None:
            cached_options, response = self._cached
            if cached_options == options and self._validator(options, response):
                return response
        task = self._inflight.get(options)
        if task is None:
            task = asyncio.get_running_loop().create_task(
                self._fetch_and_store(options, self._generation),
                name="lkbridge.tokens.caching_fetch",
            )
            self._inflight[options] = task
            task.add_done_callback(lambda t: self._forget(options, t))
        return await asyncio.shield(task)

    def _forget(
        self, options: TokenRequestOptions, task: asyncio.Task[TokenSourceResponse]
    ) -> None:
        if self._inflight.get(options) is task:
            del self._inflight[options]
        if not task.cancelled():
            task.exception()  # retrieved here so a fetch nobody awaits any more logs no warning

    async def _fetch_and_store(
        self, options: TokenRequestOptions, generation: int
    ) -> TokenSourceResponse:
        response = await self.wrapped.fetch(options)
        if generation == self._generation:
            self._cached = (options, response)
        return response


def with_room_name(options: TokenRequestOptions, room_name: str | None) -> TokenRequestOptions:
    """Options with room_name pinned, unless they already name a room."""
    if room_name is None or options.room_name is not None:
        return options
    return replace(options, room_name=room_name)
