"""The MQTT client's paho-free parts: outbox order, bounds and expiry; validation; settings."""

from __future__ import annotations

import pytest

from lkbridge.errors import LkbridgeError
from lkbridge.mqtt.client import (
    IncomingMessage,
    MqttClient,
    MqttError,
    MqttSettings,
    TlsSettings,
    WillMessage,
)
from lkbridge.mqtt.types import (
    Hooks,
    Inbox,
    PublishQueue,
    QueuedMessage,
    backoff_delay,
    check_properties,
    check_topic,
)


def queued(n: int, expiry: int | None = None, at: float = 100.0) -> QueuedMessage:
    props = {"message_expiry_interval": expiry} if expiry is not None else None
    return QueuedMessage(f"t/{n}", str(n).encode(), 1, False, check_properties(props or {}), at)


def test_outbox_is_fifo_bounded_and_counts_what_it_drops() -> None:
    box = PublishQueue(limit=3)
    assert [box.put(queued(i)) for i in range(5)] == [True, True, True, False, False]
    assert (len(box), box.dropped, box.dropped_since_mark) == (3, 2, 2)
    assert box.take_dropped_since_mark() == 2
    assert box.take_dropped_since_mark() == 0 and box.dropped == 2
    popped = [box.pop(now=100.0) for _ in range(4)]
    assert [p[0].payload for p in popped if p] == [b"0", b"1", b"2"]
    assert popped[3] is None
    assert box.put(queued(9))  # room again


def test_a_retained_message_replaces_the_one_waiting_for_its_topic() -> None:
    box = PublishQueue(limit=3)

    def retained(topic: str, value: str) -> QueuedMessage:
        return QueuedMessage(topic, value.encode(), 1, True, None, 100.0)

    assert box.put(retained("s/state", "connecting"))
    assert box.put(queued(1))
    assert box.put(retained("s/state", "connected"))  # replaces "connecting": still 2 waiting
    assert box.put(queued(2))
    assert (len(box), box.replaced, box.dropped) == (3, 1, 0)
    assert not box.put(queued(3))  # full: an event is dropped and counted
    assert box.put(retained("s/state", "listening"))  # a newer state always fits
    assert not box.put(retained("s/other", "x"))  # a new retained topic does not
    popped = [box.pop(now=100.0) for _ in range(4)]
    assert [(p[0].topic, p[0].payload) for p in popped if p] == [
        ("t/1", b"1"), ("t/2", b"2"), ("s/state", b"listening")
    ]
    assert popped[3] is None and len(box) == 0
    assert box.put(retained("s/state", "gone"))  # sent ones are not replaced
    assert box.pop(now=100.0) is not None and box.replaced == 2


def test_retained_messages_are_all_kept_when_replacing_is_off() -> None:
    # connected, every value goes out in order (a receiver error per bad payload, say)
    box = PublishQueue(limit=5)
    for value in (b"a", b"b", b"c"):
        assert box.put(QueuedMessage("s/error", value, 1, True, None, 100.0), replace=False)
    assert len(box) == 3 and box.replaced == 0
    assert box.put(QueuedMessage("s/error", b"d", 1, True, None, 100.0))  # replaces "c" only
    popped = [box.pop(now=100.0) for _ in range(4)]
    assert [p[0].payload for p in popped if p] == [b"a", b"b", b"d"]


def test_outbox_counts_down_message_expiry_and_discards_expired() -> None:
    box = PublishQueue(limit=10)
    box.put(queued(0, expiry=1, at=100.0))
    box.put(queued(1, expiry=60, at=100.0))
    box.put(queued(2, expiry=None, at=100.0))
    box.put(queued(3, expiry=0, at=100.0))  # 0 means no expiry, as Mosquitto reads it
    first = box.pop(now=102.5)
    assert first is not None and first[0].payload == b"1" and first[1] == 58  # rounded up
    assert box.expired == 1
    assert [box.pop(now=1e9) for _ in range(2)] == [
        (queued(2), None),
        (queued(3, expiry=0), None),
    ]


@pytest.mark.parametrize(
    ("topic", "is_filter", "ok"),
    [
        ("a/b", False, True),
        ("a/+/b", False, False),
        ("a/#", False, False),
        ("", False, False),
        ("a/+/b", True, True),
        ("a/#", True, True),
        ("#", True, True),
        ("a/#/b", True, False),
        ("a/b+", True, False),
        ("a\0b", False, False),
        ("x" * 70000, False, False),
    ],
)
def test_topic_validation(topic: str, is_filter: bool, ok: bool) -> None:
    if ok:
        check_topic(topic, is_filter=is_filter)
    else:
        with pytest.raises(MqttError, match="invalid MQTT topic"):
            check_topic(topic, is_filter=is_filter)


def test_properties_are_checked_and_normalised() -> None:
    props = check_properties({"user_properties": {"a": "1"}, "correlation_data": b"x"})
    assert props == {"user_properties": (("a", "1"),), "correlation_data": b"x"}
    with pytest.raises(MqttError, match="unknown MQTT property 'ResponseTopic'"):
        check_properties({"ResponseTopic": "x"})
    with pytest.raises(MqttError, match="'correlation_data' must not be a str"):
        check_properties({"correlation_data": "text"})
    with pytest.raises(MqttError, match="message_expiry_interval"):
        check_properties({"message_expiry_interval": -1})
    with pytest.raises(MqttError, match="message_expiry_interval' must not be a bool"):
        check_properties({"message_expiry_interval": True})
    with pytest.raises(MqttError, match=r"\(str, str\) pairs"):
        check_properties({"user_properties": [("a",)]})
    with pytest.raises(MqttError, match="invalid MQTT topic"):
        check_properties({"response_topic": "a/#"})


def test_settings_are_validated_and_hide_the_password() -> None:
    settings = MqttSettings(username="u", password="s3cret")
    assert "s3cret" not in repr(settings)
    with pytest.raises(MqttError, match="protocol"):
        MqttSettings(protocol="4")  # type: ignore[arg-type]
    with pytest.raises(MqttError, match="reconnect"):
        MqttSettings(reconnect_min=5, reconnect_max=1)
    with pytest.raises(MqttError, match="invalid MQTT topic"):
        MqttSettings(will=WillMessage("a/+"))
    assert issubclass(MqttError, LkbridgeError)


def test_missing_tls_files_are_a_clear_error() -> None:
    with pytest.raises(MqttError, match="cannot load the MQTT TLS files"):
        MqttClient(MqttSettings(tls=TlsSettings(ca_file="/nonexistent/ca.pem")))


async def test_publish_validates_before_queueing() -> None:
    client = MqttClient(MqttSettings(queue_limit=2))  # never entered: nothing connects
    with pytest.raises(MqttError, match="wildcards"):
        client.publish_nowait("a/#", b"x")
    with pytest.raises(MqttError, match="QoS"):
        client.publish_nowait("a", b"x", qos=3)
    assert client.publish_nowait("a", "text is sent as UTF-8")
    assert client.queued_count == 1 and client.dropped_count == 0
    await client.aclose()


def test_incoming_message_expiry() -> None:
    msg = IncomingMessage("t", b"", 1, False, message_expiry_interval=5, received_at=10.0)
    assert not msg.expired(now=14.9)
    assert msg.expired(now=15.0)
    assert not IncomingMessage("t", b"", 1, False, received_at=0.0).expired(now=1e9)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    settings = MqttSettings(reconnect_min=0.5, reconnect_max=30.0)
    for attempt, ceiling in [(0, 0.5), (1, 1.0), (3, 4.0), (6, 30.0), (1000, 30.0)]:
        delays = {backoff_delay(attempt, settings) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


async def test_inbox_bounds_counts_and_ends_every_reader() -> None:
    inbox = Inbox(limit=2)
    assert [inbox.put(IncomingMessage(f"t/{i}", b"", 1, False)) for i in range(3)] == [
        True,
        True,
        False,
    ]
    assert inbox.dropped == 1
    inbox.close()
    assert [m.topic async for m in inbox] == ["t/0", "t/1"]
    assert [m.topic async for m in inbox] == []  # a second reader ends too


async def test_hooks_run_in_order_and_survive_a_failing_one() -> None:
    hooks: Hooks[int] = Hooks()
    seen: list[str] = []

    async def broken(n: int) -> None:
        raise RuntimeError("boom")

    async def good(n: int) -> None:
        seen.append(f"good {n}")

    hooks.add(broken)
    remove = hooks.add(good)
    await hooks.run(1)
    remove()
    await hooks.run(2)
    assert seen == ["good 1"]
