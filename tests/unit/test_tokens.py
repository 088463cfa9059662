"""Token sources: request/response shapes, a real local token endpoint, minting, caching, JWTs."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

from lkbridge.errors import InvalidTokenError, TokenSourceError
from lkbridge.tokens.sources import (
    CachingTokenSource,
    CustomTokenSource,
    DevelopmentTokenSource,
    EndpointTokenSource,
    LiteralTokenSource,
    MintedTokenSource,
    TokenRequestOptions,
    TokenSourceResponse,
    check_token_usable,
    decode_jwt_unverified,
    excerpt,
    sanitize_sandbox_id,
    token_dispatches_agent,
    token_is_valid,
    with_room_name,
)

SECRET = "s3cr3t-api-secret-that-must-never-leak-0123456789"


def make_jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        raw = json.dumps(obj).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def valid_jwt(**extra: Any) -> str:
    now = int(time.time())
    return make_jwt({"sub": "u", "nbf": now - 5, "exp": now + 3600, **extra})


# --------------------------------------------------------------------------- options / response


def test_empty_options_still_send_an_empty_room_config() -> None:
    assert TokenRequestOptions().to_request() == {"room_config": {}}


def test_options_serialise_to_the_snake_case_endpoint_body() -> None:
    options = TokenRequestOptions(
        room_name="r",
        participant_name="n",
        participant_identity="id",
        participant_metadata="m",
        participant_attributes={"k": "v"},
        agent_name="my-agent",
        agent_metadata="{}",
        agent_deployment="prod",
    )
    assert options.to_request() == {
        "room_name": "r",
        "participant_name": "n",
        "participant_identity": "id",
        "participant_metadata": "m",
        "participant_attributes": {"k": "v"},
        "room_config": {
            "agents": [{"agent_name": "my-agent", "metadata": "{}", "deployment": "prod"}]
        },
    }


def test_any_agent_field_makes_one_dispatch_and_none_fields_are_omitted() -> None:
    body = TokenRequestOptions(agent_metadata="x").to_request()
    assert body == {"room_config": {"agents": [{"metadata": "x"}]}}


def test_options_compare_and_hash_by_value_and_copy_their_attributes() -> None:
    attrs = {"k": "v"}
    a = TokenRequestOptions(participant_attributes=attrs)
    b = TokenRequestOptions(participant_attributes={"k": "v"})
    assert a == b and hash(a) == hash(b)
    attrs["k"] = "changed"
    assert a == b
    assert TokenRequestOptions(agent_name="x") != TokenRequestOptions(agent_name="y")
    assert with_room_name(TokenRequestOptions(), "pinned").room_name == "pinned"
    assert with_room_name(TokenRequestOptions(room_name="own"), "pinned").room_name == "own"


def test_response_accepts_snake_and_camel_case() -> None:
    snake = TokenSourceResponse.from_dict(
        {"server_url": "ws://x", "participant_token": "t", "room_name": "r"}
    )
    camel = TokenSourceResponse.from_dict(
        {"serverUrl": "ws://x", "participantToken": "t", "participantName": "n", "roomName": "r"}
    )
    assert (snake.server_url, snake.participant_token, snake.room_name) == ("ws://x", "t", "r")
    assert (camel.participant_name, camel.room_name) == ("n", "r")


def test_response_without_required_fields_says_which() -> None:
    with pytest.raises(TokenSourceError, match="without server_url and participant_token"):
        TokenSourceResponse.from_dict({"hello": 1})
    with pytest.raises(TokenSourceError, match="not an object"):
        TokenSourceResponse.from_dict([1, 2])


def test_token_never_appears_in_repr() -> None:
    token = valid_jwt()
    response = TokenSourceResponse(server_url="ws://x", participant_token=token)
    assert token not in repr(response)
    assert token not in repr(LiteralTokenSource("ws://x", token))


# --------------------------------------------------------------------------- JWT helpers


def test_decode_and_dispatch_detection() -> None:
    assert decode_jwt_unverified(valid_jwt(name="Ann"))["name"] == "Ann"
    assert token_dispatches_agent(valid_jwt(roomConfig={"agents": [{"agentName": "a"}]}))
    assert token_dispatches_agent(valid_jwt(room_config={"agents": [{"agent_name": "a"}]}))
    assert not token_dispatches_agent(valid_jwt(roomConfig={"agents": []}))
    assert not token_dispatches_agent(valid_jwt(roomConfig={}))
    assert not token_dispatches_agent(valid_jwt())
    assert not token_dispatches_agent("garbage")


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.!!!.c", f"a.{'x' * 8}.c"])
def test_malformed_tokens_are_reported_without_echoing_them(token: str) -> None:
    with pytest.raises(InvalidTokenError, match="malformed") as info:
        decode_jwt_unverified(token)
    if token:
        assert token not in str(info.value)


def test_cache_validity_uses_a_60_second_tolerance() -> None:
    now = 1_000_000.0
    assert token_is_valid(make_jwt({"nbf": now - 1, "exp": now + 61}), now=now)
    assert not token_is_valid(make_jwt({"nbf": now - 1, "exp": now + 60}), now=now)
    assert not token_is_valid(make_jwt({"nbf": now + 5, "exp": now + 3600}), now=now)
    assert not token_is_valid(make_jwt({"nbf": now - 1}), now=now)  # exp missing
    assert token_is_valid(make_jwt({"exp": now + 3600}), now=now)  # nbf optional
    assert token_is_valid(make_jwt({"exp": now + 30}), tolerance=10, now=now)
    assert not token_is_valid("not-a-jwt", now=now)


def test_check_token_usable_explains_expired_and_not_yet_valid() -> None:
    now = 1_800_000_000.0
    with pytest.raises(InvalidTokenError, match=r"expired at 2027-01-15T08:00:00\+00:00"):
        check_token_usable(make_jwt({"exp": now}), now=now)
    with pytest.raises(InvalidTokenError, match="not valid before"):
        check_token_usable(make_jwt({"nbf": now + 3600, "exp": now + 7200}), now=now)
    check_token_usable(make_jwt({"nbf": now + 30, "exp": now + 7200}), now=now)  # small skew ok
    with pytest.raises(InvalidTokenError, match="malformed"):
        check_token_usable("nope", now=now)


def test_excerpt_is_short_single_line_and_token_free() -> None:
    token = valid_jwt()
    text = excerpt(f"boom\n\tinvalid token: {token}\x00 " + "x" * 500)
    assert token not in text and "<token>" in text
    assert "\n" not in text and len(text) <= 160


# --------------------------------------------------------------------------- a real endpoint


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def endpoint() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Serve a handler on 127.0.0.1 with a real aiohttp server; yields a function -> base URL."""
    runners: list[web.AppRunner] = []

    async def serve(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def test_endpoint_posts_options_and_parses_a_snake_case_answer(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[tuple[str, dict[str, Any], str | None, str | None]] = []
    token = valid_jwt()

    async def handler(request: web.Request) -> web.Response:
        seen.append(
            (
                request.method,
                await request.json(),
                request.headers.get("Content-Type"),
                request.headers.get("Authorization"),
            )
        )
        return web.json_response(
            {"server_url": "ws://lk", "participant_token": token, "room_name": "r1"}, status=201
        )

    base = await endpoint(handler)
    source = EndpointTokenSource(base + "/token", headers={"Authorization": "Bearer abc"})
    response = await source.fetch(TokenRequestOptions(agent_name="bot"))
    assert (response.server_url, response.participant_token, response.room_name) == (
        "ws://lk",
        token,
        "r1",
    )
    assert seen == [
        (
            "POST",
            {"room_config": {"agents": [{"agent_name": "bot"}]}},
            "application/json",
            "Bearer abc",
        )
    ]
    assert "abc" not in repr(source)


async def test_endpoint_accepts_camel_case(endpoint: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"serverUrl": "wss://lk", "participantToken": "tok"})

    response = await EndpointTokenSource(await endpoint(handler)).fetch()
    assert (response.server_url, response.participant_token) == ("wss://lk", "tok")


async def test_endpoint_http_error_says_server_and_status_never_the_body(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    """An internal server's answer must not be readable through our errors (SSRF read-back)."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=404, text="internal-only page: db_password=hunter2\n" * 20)

    base = await endpoint(handler)
    with pytest.raises(TokenSourceError) as info:
        await EndpointTokenSource(base + "/token?key=hidden").fetch()
    err = info.value
    assert err.status == 404
    assert str(err) == f"token endpoint {base}/token answered HTTP 404 Not Found"
    assert err.body_excerpt is None


async def test_endpoint_non_json_body_is_not_echoed(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200, text="<html>internal router admin</html>")

    with pytest.raises(TokenSourceError) as info:
        await EndpointTokenSource(await endpoint(handler)).fetch()
    assert "returned a body that is not JSON (HTTP 200, 34 bytes)" in str(info.value)
    assert "router" not in str(info.value)


@pytest.mark.parametrize("chunked", [False, True])
async def test_endpoint_body_is_capped_while_streaming(
    endpoint: Callable[[Handler], Awaitable[str]], chunked: bool
) -> None:
    """A huge answer is refused after 64 KiB, without reading (or holding) the rest."""
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        if not chunked:
            response.content_length = 100 * 1024 * 1024
        await response.prepare(request)
        block = b"x" * 65_536
        try:
            for _ in range(1600):  # 100 MiB if the client kept reading
                await response.write(block)
                sent += len(block)
        except (ConnectionError, RuntimeError):
            pass
        return response

    with pytest.raises(TokenSourceError, match="answered with more than 65536 bytes; refused"):
        await EndpointTokenSource(await endpoint(handler), timeout=20).fetch()
    assert sent < 20 * 1024 * 1024


async def test_endpoint_json_without_credentials_is_a_clear_error(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"server_url": "ws://x"})

    with pytest.raises(TokenSourceError, match="returned JSON without participant_token"):
        await EndpointTokenSource(await endpoint(handler)).fetch()


async def test_unreachable_endpoint_says_so(endpoint: Callable[[Handler], Awaitable[str]]) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    base = await endpoint(handler)
    port = int(base.rsplit(":", 1)[1])
    # A port that was just free: bind-and-close gives one nobody listens on.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dead_port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    assert dead_port != port
    with pytest.raises(TokenSourceError, match=r"is unreachable: .*[Cc]onnect"):
        await EndpointTokenSource(f"http://127.0.0.1:{dead_port}/token", timeout=5).fetch()


def test_endpoint_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="token endpoint url"):
        EndpointTokenSource("ftp://example/token")


async def test_development_source_sanitises_the_sandbox_id_and_honours_base_url(
    endpoint: Callable[[Handler], Awaitable[str]],
) -> None:
    seen: list[tuple[str, str | None]] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.path, request.headers.get("X-Sandbox-ID")))
        return web.json_response({"server_url": "ws://x", "participant_token": "t"})

    source = DevelopmentTokenSource("  --my-sandbox-42!! ", base_url=await endpoint(handler) + "/")
    await source.fetch()
    assert seen == [("/api/v2/sandbox/connection-details", "my-sandbox-42")]
    assert sanitize_sandbox_id("_ab-c_") == "ab-c"
    with pytest.raises(ValueError, match="sandbox id"):
        sanitize_sandbox_id("--")


# --------------------------------------------------------------------------- minted tokens


async def test_minted_token_carries_identity_room_and_agent_dispatch() -> None:
    source = MintedTokenSource(
        "ws://lk:7880", "key", SECRET, name="Kitchen", ttl=timedelta(minutes=10)
    )
    response = await source.fetch(TokenRequestOptions(agent_name="bot", agent_metadata="{}"))
    claims = decode_jwt_unverified(response.participant_token)
    assert response.server_url == "ws://lk:7880"
    assert claims["sub"] == source.identity and source.identity.startswith("lkbridge-")
    assert claims["name"] == "Kitchen" == response.participant_name
    assert claims["video"]["room"] == response.room_name
    assert response.room_name is not None and response.room_name.startswith("lkbridge-")
    assert claims["roomConfig"]["agents"] == [{"agentName": "bot", "metadata": "{}"}]
    assert response.dispatches_agent
    assert 590 <= claims["exp"] - claims["nbf"] <= 600
    from livekit import api

    verified = api.TokenVerifier("key", SECRET).verify(response.participant_token)
    assert verified.identity == source.identity


async def test_minted_rooms_are_fresh_unless_pinned() -> None:
    source = MintedTokenSource("ws://lk", "key", SECRET)
    first = await source.fetch()
    second = await source.fetch()
    assert first.room_name != second.room_name
    assert not first.dispatches_agent
    pinned = await source.fetch(TokenRequestOptions(room_name="lobby", participant_identity="me"))
    assert pinned.room_name == "lobby"
    assert decode_jwt_unverified(pinned.participant_token)["sub"] == "me"


def test_minted_source_never_shows_its_secret() -> None:
    source = MintedTokenSource("ws://lk", "key", SECRET)
    assert SECRET not in repr(source)
    with pytest.raises(ValueError) as info:
        MintedTokenSource("ws://lk", "key", "")
    assert "api_secret" in str(info.value)
    with pytest.raises(ValueError, match="server url"):
        MintedTokenSource("lk:7880", "key", SECRET)


# --------------------------------------------------------------------------- custom


async def test_custom_source_accepts_sync_async_and_dict_results() -> None:
    seen: list[TokenRequestOptions] = []

    def sync_fn(options: TokenRequestOptions) -> dict[str, str]:
        seen.append(options)
        return {"serverUrl": "ws://a", "participantToken": "t1"}

    async def async_fn(options: TokenRequestOptions) -> TokenSourceResponse:
        return TokenSourceResponse(server_url="ws://b", participant_token="t2")

    assert (
        await CustomTokenSource(sync_fn).fetch(TokenRequestOptions(room_name="r"))
    ).server_url == "ws://a"
    assert seen == [TokenRequestOptions(room_name="r")]
    assert (await CustomTokenSource(async_fn).fetch()).participant_token == "t2"


async def test_custom_source_failures_become_token_source_errors() -> None:
    def broken(options: TokenRequestOptions) -> TokenSourceResponse:
        raise RuntimeError("vault sealed")

    with pytest.raises(
        TokenSourceError, match="custom token source failed: RuntimeError: vault sealed"
    ):
        await CustomTokenSource(broken).fetch()


# --------------------------------------------------------------------------- caching


class CountingSource:
    """A configurable source that counts fetches and can be slowed down or made to fail."""

    def __init__(self, *, token: Callable[[], str] = valid_jwt, delay: float = 0.0) -> None:
        self.calls: list[TokenRequestOptions] = []
        self.token = token
        self.delay = delay
        self.fail: Exception | None = None

    async def fetch(self, options: TokenRequestOptions | None = None) -> TokenSourceResponse:
        self.calls.append(options or TokenRequestOptions())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return TokenSourceResponse(server_url="ws://x", participant_token=self.token())


async def test_cache_reuses_a_valid_token_for_equal_options() -> None:
    inner = CountingSource()
    cache = CachingTokenSource(inner)
    first = await cache.fetch(TokenRequestOptions(agent_name="a"))
    again = await cache.fetch(TokenRequestOptions(agent_name="a"))
    assert again is first and len(inner.calls) == 1
    assert cache.cached_response() is first
    other = await cache.fetch(TokenRequestOptions(agent_name="b"))
    assert other is not first and len(inner.calls) == 2
    assert cache.cached_response() is other  # one entry only


async def test_cache_refetches_tokens_close_to_expiry() -> None:
    inner = CountingSource(token=lambda: make_jwt({"exp": time.time() + 30}))
    cache = CachingTokenSource(inner)
    await cache.fetch()
    await cache.fetch()
    assert len(inner.calls) == 2


async def test_concurrent_fetches_share_one_request() -> None:
    inner = CountingSource(delay=0.05)
    cache = CachingTokenSource(inner)
    results = await asyncio.gather(*(cache.fetch() for _ in range(5)))
    assert len(inner.calls) == 1
    assert all(r is results[0] for r in results)


async def test_invalidate_forces_a_new_fetch_and_a_racing_fetch_is_not_stored() -> None:
    inner = CountingSource(delay=0.05)
    cache = CachingTokenSource(inner)
    await cache.fetch()
    cache.invalidate()
    assert cache.cached_response() is None
    pending = asyncio.ensure_future(cache.fetch())
    await asyncio.sleep(0.01)
    cache.invalidate()  # while that fetch is in flight
    response = await pending
    assert response.participant_token
    assert cache.cached_response() is None
    assert len(inner.calls) == 2


async def test_errors_are_not_cached() -> None:
    inner = CountingSource()
    inner.fail = TokenSourceError("down")
    cache = CachingTokenSource(inner)
    with pytest.raises(TokenSourceError):
        await cache.fetch()
    inner.fail = None
    assert (await cache.fetch()).participant_token
    assert len(inner.calls) == 2


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch() -> None:
    inner = CountingSource(delay=0.05)
    cache = CachingTokenSource(inner)
    first = asyncio.ensure_future(cache.fetch())
    second = asyncio.ensure_future(cache.fetch())
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).participant_token
    assert len(inner.calls) == 1
