"""The MQTT control plane under strangers' input: own topics kept, scrubbing, bounds, priorities."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from lkbridge.bridges.hub import HubEvent, HubEventKind, MessageEvent
from lkbridge.bridges.mqtt.bridge import INFO_LIMIT, MqttBridge
from lkbridge.bridges.mqtt.incoming import ENDED
from lkbridge.bridges.mqtt.lanes import Job, Lanes
from lkbridge.bridges.mqtt.limits import TokenBucket, response_topic_problem
from lkbridge.config.models import Config, ControlConfig, MqttConfig
from lkbridge.errors import TransportError
from lkbridge.log import clear_registered_secrets, register_secret
from lkbridge.messages import ReceivedMessage
from lkbridge.mqtt.topic import filters_overlap, topic_matches
from lkbridge.mqtt.types import PublishQueue
from tests.support.fake_hub import MESSAGE, FakeHub, error_of
from tests.unit.test_mqtt_bridge import FakeClient, events, settle

SECRET = "s3cr3t-header-value-42"


def make_config(**control: Any) -> Config:
    return Config(
        mqtt=MqttConfig(base_topic="lkb", client_id="test", max_payload_bytes=1024),
        control=ControlConfig(**control),
    )


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub("kitchen", "office")


@pytest.fixture
def client() -> FakeClient:
    return FakeClient()


@pytest.fixture
def secret() -> Iterator[str]:
    register_secret(SECRET)
    yield SECRET
    clear_registered_secrets()


async def start(hub: FakeHub, client: FakeClient, **control: Any) -> MqttBridge:
    bridge = MqttBridge(hub, make_config(**control), client=client, ha_birth_delay=(0.0, 0.0))  # type: ignore[arg-type]
    await bridge.__aenter__()
    return bridge


@pytest.fixture
async def bridge(hub: FakeHub, client: FakeClient) -> AsyncIterator[MqttBridge]:
    bridge = await start(hub, client)
    yield bridge
    await bridge.aclose()


def answers(client: FakeClient, action: str) -> list[dict[str, Any]]:
    return [p.json() for p in client.on(f"lkb/bridge/response/{action}")]


# -- the MQTT matching rule (one copy) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("lkb/bridge/request/#", "#", True),
        ("lkb/bridge/request/#", "lkb/+/+", True),
        ("lkb/bridge/request/#", "lkb/bridge/request", True),  # '#' matches its parent too
        ("lkb/bridge/request/#", "lkb/bridge", False),
        ("lkb/+/send", "lkb/kitchen/inbound", False),
        ("lkb/+/send", "lkb/+/+/send", False),
        ("lkb/+/send", "+/kitchen/#", True),
        ("$SYS/#", "#", False),
        ("homeassistant/status", "homeassistant/+", True),
    ],
)
def test_filters_overlap(a: str, b: str, overlap: bool) -> None:
    assert filters_overlap(a, b) is overlap
    assert filters_overlap(b, a) is overlap


def test_topic_matches_follows_paho() -> None:
    from paho.mqtt.client import topic_matches_sub

    filters = ["#", "+", "a/#", "a/+", "a/b", "+/b", "a/+/c", "$SYS/#", "+/+", "a/b/#", "b/#"]
    topics = ["a", "a/b", "a/b/c", "b", "$SYS/x", "x/b", "a/x/c", "a/", "/a"]
    for f in filters:
        for t in topics:
            assert topic_matches(f, t) is topic_matches_sub(f, t), (f, t)
            assert filters_overlap(f, t) is topic_matches_sub(f, t), (f, t)  # the same rule


# -- the bridge's own topics are never taken away ------------------------------------------------


async def test_a_transport_may_not_subscribe_over_the_bridges_topics(bridge: MqttBridge) -> None:
    service = bridge._service
    for topic_filter in ("lkb/bridge/request/#", "#", "lkb/+/+", "lkb/kitchen/send"):
        with pytest.raises(TransportError, match="overlaps the bridge's own topics"):
            await service.subscribe(topic_filter, lambda topic, payload: None)
    await service.subscribe("lkb/kitchen/inbound", lambda topic, payload: None)  # fine


async def test_the_bridge_handles_its_own_topics_whatever_a_transport_subscribed(
    bridge: MqttBridge, client: FakeClient
) -> None:
    """0.1: a transport subscription matching a request made the bridge skip it (deaf daemon)."""
    seen: list[str] = []
    # As a 0.1 overrides file could still have arranged it: bypass the subscribe() check.
    bridge._service._handlers.append(("#", lambda topic, payload: seen.append(topic)))
    client.deliver("lkb/bridge/request/health_check", '{"transaction": 1}')
    client.deliver("lkb/kitchen/command", "start")
    await settle()
    assert answers(client, "health_check")[0]["status"] == "ok"
    assert ("start", "kitchen") in bridge._hub.calls  # type: ignore[attr-defined]
    assert seen == ["lkb/bridge/request/health_check", "lkb/kitchen/command"]


# -- one scrubbing point -------------------------------------------------------------------------


async def test_every_publish_is_scrubbed_including_the_republish(
    hub: FakeHub, client: FakeClient, secret: str
) -> None:
    """0.1 scrubbed the first publish of an error but re-published it raw on HA birth and on
    every reconnect; snapshots and health_check were not scrubbed at all."""
    error = {"kind": "token_source", "message": f"headers {{'Authorization': '{secret}'}}"}
    hub.sessions["kitchen"]["error"] = error
    hub.health = lambda: {"status": "ok", "broken_sessions": {"kitchen": secret}}  # type: ignore[method-assign]
    bridge = await start(hub, client)
    try:
        await client.connect()  # publish_all
        client.deliver("homeassistant/status", "online")  # HA birth: publish_all again
        client.deliver("lkb/bridge/request/health_check", "")
        hub.emit(HubEvent(HubEventKind.ERROR, "kitchen", error_of(error)))
        hub.change("kitchen", error=error)
        await settle()
        await asyncio.sleep(0.05)
        await settle()
        errors = client.on("lkb/kitchen/error")
        assert len(errors) >= 3  # first publish, re-publish on birth, the event
        assert client.on("lkb/bridge/response/health_check")
        for pub in client.published:
            assert secret.encode() not in pub.payload, pub.topic
        assert b"***" in errors[-1].payload
    finally:
        await bridge.aclose()


# -- a full queue prefers events; drops are reported at once -------------------------------------


async def test_a_request_flood_cannot_push_out_message_events(
    hub: FakeHub, client: FakeClient
) -> None:
    """0.1: 30,000 health_checks while chatting lost 23 of 39 final message events silently."""
    bridge = await start(hub, client)
    try:
        await client.connect()
        client.outbox = PublishQueue(40)  # the broker went away: nothing drains
        for _ in range(100):
            client.deliver("lkb/bridge/request/health_check", "")
        await settle()
        for index in range(5):
            message = ReceivedMessage.from_dict({**MESSAGE, "id": f"m{index}"})
            hub.emit(HubEvent(HubEventKind.MESSAGE, "kitchen", MessageEvent("kitchen", message)))
        await asyncio.sleep(0.05)
        assert len(client.on("lkb/kitchen/message")) == 5  # every message event got in
        assert len(answers(client, "health_check")) == 30  # answers use 3/4 of the queue
        [report] = [e for e in events(client) if e["event"] == "events_dropped"]
        assert report == {"event": "events_dropped", "count": 70, "total": 70}
    finally:
        await bridge.aclose()


# -- bounds --------------------------------------------------------------------------------------


async def test_requests_per_second_are_bounded_and_refusals_reported(
    hub: FakeHub, client: FakeClient
) -> None:
    bridge = await start(hub, client, requests_per_second=0.001, request_burst=3)
    try:
        for _ in range(10):
            client.deliver("lkb/bridge/request/health_check", "")
        await settle()
        await asyncio.sleep(0.05)
        assert len(answers(client, "health_check")) == 3
        [report] = [e for e in events(client) if e["event"] == "requests_refused"]
        assert report == {"event": "requests_refused", "count": 7, "total": 7}
    finally:
        await bridge.aclose()


async def test_requests_in_flight_are_bounded(hub: FakeHub, client: FakeClient) -> None:
    gate = asyncio.Event()
    real_send = hub.send

    async def slow_send(session_id: str, text: str, **kw: Any) -> dict[str, Any]:
        await gate.wait()
        return await real_send(session_id, text, **kw)

    hub.send = slow_send  # type: ignore[method-assign]
    bridge = await start(hub, client, max_requests_in_flight=2)
    try:
        for index in range(3):
            body = {"session": "kitchen", "text": "hi", "transaction": index}
            client.deliver("lkb/bridge/request/session/send", json.dumps(body))
        await settle()
        [busy] = answers(client, "session/send")
        assert busy["transaction"] == 2 and busy["error"].startswith("busy: 2 requests")
        gate.set()
        await settle()
        assert [a["status"] for a in answers(client, "session/send")] == ["error", "ok", "ok"]
    finally:
        await bridge.aclose()


async def test_bridge_info_is_bounded(hub: FakeHub, client: FakeClient) -> None:
    huge = {"version": "t", "sessions": ["s"] * 10, "config": {"x": "y" * (INFO_LIMIT * 2)}}
    hub.info = lambda: huge  # type: ignore[method-assign]
    bridge = await start(hub, client)
    try:
        await client.connect()
        [info] = client.on("lkb/bridge/info")
        assert len(info.payload) <= INFO_LIMIT
        assert info.json()["truncated"] is True and info.json()["session_count"] == 10
    finally:
        await bridge.aclose()


def test_token_bucket() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] = 1.0
    assert [bucket.take() for _ in range(3)] == [True, True, False]


# -- response topics -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["homeassistant/device/x/config", "elsewhere/replies", "lkb/kitchen/send",
              "lkb/bridge/request/session/remove", "lkbx/replies"],
)
async def test_a_response_topic_outside_base_or_on_a_command_topic_is_refused(
    bridge: MqttBridge, client: FakeClient, topic: str
) -> None:
    """0.1: an MQTT v5 Response Topic could name any topic (a confused deputy under ACLs)."""
    client.deliver("lkb/bridge/request/health_check", "{}", response_topic=topic)
    await settle()
    assert not client.on(topic)
    assert answers(client, "health_check")  # still answered on the standard topic
    [refused] = [e for e in events(client) if e["event"] == "response_topic_refused"]
    assert topic in refused["error"]
    assert response_topic_problem("lkb/replies/me", "lkb", ["lkb/+/send"]) is None


@pytest.mark.parametrize(
    "topic", ["lkb/bridge/state", "lkb/bridge/event", "lkb/bridge/response/session/send",
              "lkb/kitchen/state", "lkb/kitchen/message", "lkb/kitchen/event"],
)
async def test_a_response_topic_on_a_topic_the_bridge_publishes_is_refused(
    bridge: MqttBridge, client: FakeClient, topic: str
) -> None:
    """A requester allowed to publish requests only could have the bridge publish a forged
    state, an `unanswered` event or an answer for another requester's transaction."""
    body = '{"transaction": "forged"}'
    client.deliver("lkb/bridge/request/health_check", body, response_topic=topic)
    await settle()
    assert not [p for p in client.on(topic) if b"forged" in p.payload]
    assert answers(client, "health_check")  # still answered on the standard topic
    [refused] = [e for e in events(client) if e["event"] == "response_topic_refused"]
    assert "publishes on" in refused["error"] and topic in refused["error"]


# -- control is never stuck behind data ----------------------------------------------------------


@pytest.fixture
def stuck_sends(hub: FakeHub) -> asyncio.Event:
    """Sends wait (as for an absent agent) until the returned event is set."""
    gate = asyncio.Event()
    real_send = hub.send

    async def held(session_id: str, text: str, **kw: Any) -> dict[str, Any]:
        await gate.wait()
        return await real_send(session_id, text, **kw)

    hub.send = held  # type: ignore[method-assign]
    return gate


async def test_end_over_the_command_topic_does_not_wait_behind_sends(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub, stuck_sends: asyncio.Event
) -> None:
    """0.1: with the agent absent, 8 queued sends made session/end wait 35.8 s."""
    for index in range(8):
        client.deliver("lkb/kitchen/send", f"text {index}")
    client.deliver("lkb/kitchen/command", "end")
    client.deliver("lkb/kitchen/command", "dismiss_error")
    await settle()
    assert ("end", "kitchen") in hub.calls and ("dismiss_error", "kitchen") in hub.calls
    failed = [e for e in events(client) if e["event"] == "send_failed"]
    # Every send not under way yet is answered as ended (at most one was under way).
    assert len(failed) >= 7 and all(e["error"] == ENDED for e in failed)


async def test_end_and_reads_over_requests_do_not_wait_behind_sends(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub, stuck_sends: asyncio.Event
) -> None:
    for index in range(8):
        body = {"session": "kitchen", "text": f"t{index}", "transaction": index}
        client.deliver("lkb/bridge/request/session/send", json.dumps(body))
    client.deliver("lkb/bridge/request/session/history", '{"session": "kitchen"}')
    client.deliver("lkb/bridge/request/session/end", '{"session": "kitchen", "transaction": "e"}')
    await settle()
    assert answers(client, "session/history")[0]["status"] == "ok"
    assert answers(client, "session/end")[0]["transaction"] == "e"
    sends = answers(client, "session/send")
    assert len(sends) >= 7 and all(a["error"] == ENDED for a in sends)


async def test_a_send_after_a_start_still_waits_for_the_start(
    bridge: MqttBridge, client: FakeClient, hub: FakeHub
) -> None:
    gate = asyncio.Event()
    real_start = hub.start_session

    async def slow_start(session_id: str) -> dict[str, Any]:
        await gate.wait()
        return await real_start(session_id)

    hub.start_session = slow_start  # type: ignore[method-assign]
    client.deliver("lkb/kitchen/command", "start")
    client.deliver("lkb/kitchen/send", "after the start")
    await settle()
    assert hub.calls == []
    gate.set()
    await settle()
    assert hub.calls == [("start", "kitchen"), ("send", "kitchen", "after the start", None)]


async def test_lanes_abandon_answers_waiting_jobs_once() -> None:
    answered: list[str] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def blocker() -> None:
        started.set()
        await release.wait()

    async def never() -> None:
        raise AssertionError("abandoned jobs never run")

    tasks: list[asyncio.Task[None]] = []
    lanes = Lanes("t", lambda coro, name: tasks.append(asyncio.ensure_future(coro)))
    lanes.enqueue("a", Job(blocker, answered.append))
    await started.wait()
    lanes.enqueue("a", Job(never, answered.append))
    lanes.enqueue("a", Job(never, answered.append))
    assert lanes.waiting() == 2
    assert lanes.abandon("a", "ended") == 2
    release.set()
    await asyncio.gather(*tasks)
    assert answered == ["ended", "ended"]


# -- which actions MQTT may call -----------------------------------------------------------------


async def test_control_actions_restrict_mqtt_but_reads_always_work(
    hub: FakeHub, client: FakeClient
) -> None:
    bridge = await start(hub, client, actions=("session/start",))
    try:
        client.deliver("lkb/bridge/request/session/add", '{"session": "x", "template": "assistant"}')
        client.deliver("lkb/bridge/request/config/reload", "")
        client.deliver("lkb/bridge/request/health_check", "")
        client.deliver("lkb/bridge/request/session/history", '{"session": "kitchen"}')
        client.deliver("lkb/kitchen/send", "hi")
        client.deliver("lkb/kitchen/command", "end")
        client.deliver("lkb/kitchen/command", "start")
        await settle()
        assert "is not allowed here" in answers(client, "session/add")[0]["error"]
        assert "is not allowed here" in answers(client, "config/reload")[0]["error"]
        assert answers(client, "health_check")[0]["status"] == "ok"
        assert answers(client, "session/history")[0]["status"] == "ok"
        bad = [e["error"] for e in events(client) if e["event"] == "bad_payload"]
        assert bad == ["sending is not allowed here ([control] actions)",
                       "end is not allowed here ([control] actions)"]
        assert hub.calls == [("start", "kitchen")]
    finally:
        await bridge.aclose()


def test_payload_scrubbing_leaves_short_secrets_to_the_log() -> None:
    """The LiveKit dev server's secret is "secret": scrubbing it would break "api_secret" keys."""
    from lkbridge.log import redact_payload, redact_text

    register_secret("secret")
    register_secret("a-long-secret-value")
    try:
        payload = b'{"api_secret":{"env":"X"},"error":"a-long-secret-value"}'
        assert redact_payload(payload) == b'{"api_secret":{"env":"X"},"error":"***"}'
        assert redact_text("api secret") == "api ***"  # the log still scrubs it
        assert redact_payload(b"\xff\xfe") == b"\xff\xfe"
    finally:
        clear_registered_secrets()


async def test_a_full_lane_does_not_leak_in_flight_slots(
    hub: FakeHub, client: FakeClient, stuck_sends: asyncio.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("lkbridge.bridges.mqtt.lanes.LANE_LIMIT", 2)
    bridge = await start(hub, client, max_requests_in_flight=1000)
    try:
        for index in range(10):
            client.deliver("lkb/kitchen/send", f"t{index}")
        await settle()
        dropped = [e for e in events(client) if e["event"] == "command_dropped"]
        assert len(dropped) >= 7  # 2 waiting, perhaps 1 already under way
        assert bridge._incoming._running == 10 - len(dropped)
        stuck_sends.set()
        await settle()
        assert bridge._incoming._running == 0
    finally:
        await bridge.aclose()
