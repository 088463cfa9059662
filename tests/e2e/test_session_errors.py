"""Bad input against the real server: each failure is a clear `connection` error, then recovery."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web
from livekit import api

from devstack.livekit_server import LiveKitServer
from lkbridge import (
    ConnectionState,
    CustomTokenSource,
    EndpointTokenSource,
    LiteralTokenSource,
    Session,
    SessionErrorKind,
    SessionOptions,
    TokenRequestOptions,
    TokenSourceResponse,
)
from tests.e2e.session_helpers import minted, wait_until

pytestmark = pytest.mark.e2e


def _closed_port(addr: str) -> int:
    with socket.socket() as sock:
        sock.bind((addr, 0))
        return int(sock.getsockname()[1])


async def _assert_connection_error(session: Session, *fragments: str) -> str:
    await session.start()  # never raises
    assert session.connection_state is ConnectionState.DISCONNECTED
    assert session.error is not None and session.error.kind is SessionErrorKind.CONNECTION
    message = session.error.message
    assert message.startswith("Connection failed: ")
    for fragment in fragments:
        assert fragment in message, message
    return message


async def test_unreachable_server_then_recovery(
    livekit_server: LiveKitServer, test_addr: str
) -> None:
    real = minted(livekit_server)
    target = {"url": f"ws://{test_addr}:{_closed_port(test_addr)}"}

    async def fetch(options: TokenRequestOptions) -> TokenSourceResponse:
        response = await real.fetch(options)
        return TokenSourceResponse(
            server_url=target["url"], participant_token=response.participant_token
        )

    async with Session.from_configurable_token_source(CustomTokenSource(fetch)) as session:
        message = await _assert_connection_error(session, "is unreachable", "Connection refused")
        assert target["url"] in message
        target["url"] = livekit_server.url
        await session.start()  # start clears the error and connects
        assert session.error is None and session.connection_state is ConnectionState.CONNECTED


async def test_wrong_api_secret_is_named(livekit_server: LiveKitServer) -> None:
    wrong = minted(livekit_server)
    bad = type(wrong)(livekit_server.url, livekit_server.api_key, "not-the-secret-" + "x" * 32)
    async with Session.from_configurable_token_source(bad) as session:
        message = await _assert_connection_error(
            session, "rejected the token (HTTP 401)", "wrong API key or secret"
        )
        assert "not-the-secret" not in message and "eyJ" not in message


async def test_expired_and_malformed_tokens_are_named(livekit_server: LiveKitServer) -> None:
    expired = (
        api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
        .with_identity("late")
        .with_ttl(timedelta(seconds=-30))
        .with_grants(api.VideoGrants(room_join=True, room="r"))
        .to_jwt()
    )
    async with Session.from_fixed_token_source(
        LiteralTokenSource(livekit_server.url, expired)
    ) as session:
        await _assert_connection_error(session, "participant token expired at ")
    async with Session.from_fixed_token_source(
        LiteralTokenSource(livekit_server.url, "this-is-no-token")
    ) as session:
        await _assert_connection_error(session, "participant token is malformed")
    # Looks like a JWT to us, but the server cannot parse it: the server's verdict is reported.
    forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA"
    async with Session.from_fixed_token_source(
        LiteralTokenSource(livekit_server.url, forged)
    ) as session:
        await _assert_connection_error(session, "rejected the token (HTTP 401)")


@pytest.fixture
async def token_endpoint(livekit_server: LiveKitServer) -> AsyncIterator[dict[str, Any]]:
    """A real token endpoint on 127.0.0.1 that mints with room_config from the request body."""
    state: dict[str, Any] = {"mode": "ok", "bodies": []}

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        state["bodies"].append(body)
        if state["mode"] == "500":
            return web.Response(status=500, text="token service is down for maintenance")
        if state["mode"] == "garbage":
            return web.Response(status=200, text="{not json at all")
        room = body.get("room_name") or f"endpoint-{len(state['bodies'])}"
        token = (
            api.AccessToken(livekit_server.api_key, livekit_server.api_secret)
            .with_identity(body.get("participant_identity") or "endpoint-user")
            .with_grants(api.VideoGrants(room_join=True, room=room))
        )
        agents = body.get("room_config", {}).get("agents")
        if agents:
            token = token.with_room_config(
                api.RoomConfiguration(
                    agents=[api.RoomAgentDispatch(agent_name=a["agent_name"]) for a in agents]
                )
            )
        payload = {"serverUrl": livekit_server.url, "participantToken": token.to_jwt()}
        return web.Response(status=201, text=json.dumps(payload))

    app = web.Application()
    app.router.add_post("/token", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    yield state
    await runner.cleanup()


async def test_token_endpoint_500_and_garbage_then_a_working_endpoint_with_an_agent(
    livekit_server: LiveKitServer,
    scripted_agent: Callable[..., Any],
    token_endpoint: dict[str, Any],
) -> None:
    agent = await scripted_agent()
    session = Session.with_agent(
        agent.agent_name,
        token_source=EndpointTokenSource(token_endpoint["url"]),
        options=SessionOptions(agent_connect_timeout=10),
    )
    async with session:
        token_endpoint["mode"] = "500"
        message = await _assert_connection_error(session, "answered HTTP 500")
        # The server's body is never echoed (it may be anything an internal service returns).
        assert "maintenance" not in message, message
        token_endpoint["mode"] = "garbage"
        message = await _assert_connection_error(session, "returned a body that is not JSON")
        assert "{not json" not in message, message
        token_endpoint["mode"] = "ok"
        await session.start()
        assert session.error is None and session.connection_state is ConnectionState.CONNECTED
        await agent.wait_for_job(timeout=10)
        await wait_until(lambda: session.agent.is_connected, 10, "the dispatched agent")
    assert token_endpoint["bodies"][-1] == {
        "room_config": {"agents": [{"agent_name": agent.agent_name}]}
    }


async def test_a_receiver_that_cannot_bind_is_a_receiver_error_but_the_session_connects(
    livekit_server: LiveKitServer,
) -> None:
    from lkbridge import TranscriptionStreamReceiver

    twins = [TranscriptionStreamReceiver(), TranscriptionStreamReceiver()]
    async with Session.from_configurable_token_source(
        minted(livekit_server), receivers=twins
    ) as session:
        await session.start()
        assert session.connection_state is ConnectionState.CONNECTED
        assert session.error is not None and session.error.kind is SessionErrorKind.RECEIVER
        assert session.error.message == (
            "Message receiver failed: cannot receive lk.transcription: "
            "text stream handler for topic 'lk.transcription' already set"
        )
