"""Junk on every topic the daemon subscribes to, and junk TOML at `lkbridge check`.

Property-based (hypothesis): every input gets the contract's answer (an error response, a
bridge event, or documented silence), the daemon stays up, and its memory stays bounded.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import find_mosquitto
from lkbridge.bridges.mqtt.router import ACTIONS
from lkbridge.cli.check import check_config_file
from tests.faults.helpers import (
    Outcome,
    PersistentMosquitto,
    Publisher,
    strict_json,
    tally,
    vm_rss_kb,
)
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe, Seen

pytestmark = [
    pytest.mark.e2e,
    # A failing example may hold a 64 KiB payload: print it all the same.
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

BASE = f"fault-junk-{uuid.uuid4().hex[:6]}"
LIMIT = 65_536  # [mqtt] max_payload_bytes (the default)
ANSWER_WITHIN = 5.0
FUZZ = settings(
    max_examples=150, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SESSION = "junk"  # a configured session that is not started: its sends fail, answered
RELAY = "relay"  # a started session whose `mqtt` receiver subscribes to device topics
DEVICES = f"{BASE}-devices"
COMMANDS = ("start", "end", "dismiss_error")

# -- payloads ----------------------------------------------------------------------------------

# Inputs that broke JSON handling somewhere once: each must be answered like any other.
EDGE_PAYLOADS: list[bytes] = [
    b"",
    b" ",
    b"{",
    b"{}",
    b"[]",
    b"null",
    b'"text"',
    b"\xff\xfe",
    b'{"text": "\xc3"}',
    b"\xef\xbb\xbf{}",
    b"[" * 5_000,
    b'{"a":' * 5_000,
    b'{"text": 1' + b"0" * 5000 + b"}",
    b'{"transaction": 1' + b"0" * 5000 + b"}",
    b'{"text": NaN}',
    b'{"transaction": NaN}',
    b'{"transaction": Infinity, "session": "x"}',
    b'{"text": "\\ud800"}',
    b'{"transaction": "\\udfff"}',
    b'{"session": "\\ud83d"}',
    b'{"text": "a", "text": 5}',
    b'{"text": "a\\u0000b", "id": "nul"}',
    b'{"text": "x", "id": ""}',
    b'{"text": "x", "id": "' + b"i" * 300 + b'"}',
    b'{"transaction": "big", "text": "' + b"x" * 70_000 + b'"}',
    b"x" * (LIMIT + 1),
    b'{"command": "start", "extra": 1}',
    b'{"command": ["end"]}',
]

FIELDS = ["session", "text", "id", "messages", "config", "transaction", "command", "type", "final"]
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10), json_values, max_size=5
)
send_objects = st.fixed_dictionaries(
    {"text": st.text(max_size=30)}, optional={"id": st.text(max_size=210), "x": json_values}
)
payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_objects.map(lambda o: json.dumps(o).encode()),
    json_objects.map(lambda o: json.dumps(o, ensure_ascii=False).encode()),
    send_objects.map(lambda o: json.dumps(o).encode()),
    st.sampled_from(EDGE_PAYLOADS),
)
# Topic levels: printable text without the MQTT wildcards and the level separator.
levels = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"], exclude_characters="/+#"),
    max_size=20,
)
actions = st.sampled_from(ACTIONS) | levels | st.lists(levels, min_size=2, max_size=3).map("/".join)
VALID_ID = re.compile(r"[a-z0-9_-]{1,64}")
bad_session_ids = st.sampled_from(["", "bridge", "Kitchen", "a" * 65, "sp ace"]) | levels.filter(
    lambda s: VALID_ID.fullmatch(s) is None
)
targets = st.sampled_from(["configured", "unknown", "invalid"])
# Message events as a restore request or a device on the mqtt transport's topic would send them,
# with the values at the edges: timestamps out of datetime's range, texts that are not Unicode.
timestamps = st.one_of(
    st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
    st.sampled_from([
        "2026-01-02T03:04:05Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
        253_402_300_800_000, -62_135_596_800_001, 10**30, 1e300, -1e20,
    ]),
)
LONE_SURROGATE = "@LONE@"  # replaced by the JSON escape \ud800 in the payload
message_events_json = st.fixed_dictionaries(
    {"id": st.text(max_size=12), "timestamp": timestamps,
     "type": st.sampled_from(["agent_transcript", "user_transcript", "user_input", "other"]),
     "text": st.text(max_size=20) | st.just(LONE_SURROGATE)},
    optional={"final": st.booleans() | json_scalars},
)


def message_payload(event: dict[str, Any], unique: str) -> bytes:
    """The event as JSON; a non-empty id made unique (an unchanged message is not re-published)."""
    event = {**event, "id": f"{unique}-{event['id']}" if event["id"] else ""}
    return json.dumps(event).replace(LONE_SURROGATE, "\\ud800").encode()


restore_requests = st.tuples(
    st.just("session/restore"),
    st.fixed_dictionaries({
        "session": st.sampled_from(["nobody", SESSION]),
        "messages": st.lists(message_events_json, min_size=1, max_size=3),
    }).map(lambda body: json.dumps(body).replace(LONE_SURROGATE, "\\ud800").encode()),
)
BATCH = st.lists  # one example is a burst of inputs, published without waiting in between


# -- the contract's answer for each input (docs/mqtt.md) ----------------------------------------


def json_object(payload: bytes) -> dict[str, Any] | None:
    """The payload as an RFC 8259 JSON object (every string Unicode), else None."""
    try:
        body = strict_json(payload)
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


def transaction_of(payload: bytes) -> tuple[bool, Any]:
    """The transaction a response must echo: from a JSON object up to 16 x the size limit."""
    body = json_object(payload) if len(payload) <= 16 * LIMIT else None
    if body is not None and "transaction" in body:
        return True, body["transaction"]
    return False, None


def usable_text(payload: bytes) -> str | None:
    try:
        return payload.decode("utf-8") if len(payload) <= LIMIT else None
    except UnicodeDecodeError:
        return None


def send_is_valid(payload: bytes) -> bool:
    """Whether a `send` payload is text to send (else the answer is bad_payload)."""
    text = usable_text(payload)
    if text is None:
        return False
    body = json_object(payload) if text.lstrip().startswith("{") else None
    if body is None:
        return True  # empty or blank text is a failed send of that session, not junk
    send_id = body.get("id")
    return (
        set(body) <= {"text", "id"} and isinstance(body.get("text"), str)
        and (send_id is None or (isinstance(send_id, str) and 0 < len(send_id) <= 200))
    )


def is_command(payload: bytes) -> bool:
    """Whether a `command` payload is a command to carry out (else the answer is bad_payload)."""
    text = usable_text(payload)
    if text is None:
        return False
    text = text.strip()
    if not text.startswith("{"):
        return text in COMMANDS
    body = json_object(text.encode())
    return body is not None and list(body) == ["command"] and body["command"] in COMMANDS


# -- the daemon under test ---------------------------------------------------------------------


class Probe(MqttProbe):
    """A probe the synchronous hypothesis tests can wait on."""

    def wait_sync(self, predicate: Callable[[Seen], bool], after: int, timeout: float) -> Seen:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                items = self.messages[after:]
            for m in items:
                if predicate(m):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer within {timeout} s")
            time.sleep(0.001)

    def collect(
        self, after: int, done: Callable[[list[Seen]], bool], timeout: float
    ) -> list[Seen]:
        """Everything seen since `after`, once `done` says it is complete."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                items = self.messages[after:]
            if done(items):
                return items
            if time.monotonic() > deadline:
                return items
            time.sleep(0.002)


@dataclass
class JunkDaemon:
    daemon: DaemonProcess
    probe: Probe
    publisher: Publisher
    answered: Counter[str]  # inputs that got their answer, by kind

    @property
    def pid(self) -> int:
        assert self.daemon.proc is not None
        return self.daemon.proc.pid

    def alive(self) -> bool:
        return self.daemon.proc is not None and self.daemon.proc.poll() is None

    def record(self, kind: str, inputs: int, wanted: Counter[str], got: Counter[str]) -> Outcome:
        """The ledger line of one batch: answers missing or repeated, per input topic."""
        lost = sum(max(0, n - got[t]) for t, n in wanted.items())
        duplicated = sum(max(0, got[t] - n) for t, n in wanted.items())
        return tally(f"junk {kind} (hypothesis)").add(
            inputs, inputs if self.alive() else 0, lost, duplicated
        )

    def burst(self, inputs: list[tuple[str, bytes]]) -> int:
        """Publish every input (QoS 1, acknowledged by the broker); the probe's mark before."""
        mark = self.probe.mark()
        for topic, payload in inputs:
            self.publisher.publish(topic, payload)
        self.publisher.wait_acknowledged()
        return mark

    def health_check(self, timeout: float = 30.0) -> dict[str, Any]:
        txn = uuid.uuid4().hex
        mark = self.burst([(f"{BASE}/bridge/request/health_check",
                            json.dumps({"transaction": txn}).encode())])
        reply = self.probe.wait_sync(
            lambda m: m.topic == f"{BASE}/bridge/response/health_check"
            and strict_json(m.payload).get("transaction") == txn, mark, timeout,
        )
        return dict(reply.json())


@pytest.fixture(scope="module")
def junk(
    tmp_path_factory: pytest.TempPathFactory, livekit_server: LiveKitServer, log_dir: Path
) -> Iterator[JunkDaemon]:
    if find_mosquitto() is None:
        pytest.skip("mosquitto is not installed")
    tmp = tmp_path_factory.mktemp("junk")
    broker = PersistentMosquitto(tmp / "broker", persistence=False)  # the flood disturbs nobody
    broker.start()
    relay = session_toml(RELAY, livekit_server, None, receivers=["mqtt"]) + (
        f"[sessions.{RELAY}.transports.mqtt]\nsubscribe_topic = \"{DEVICES}/+/transcript\"\n"
    )
    config = daemon_config(
        tmp, broker.port, session_toml(SESSION, livekit_server, None, autostart=False) + relay,
        base_topic=BASE,
        # This property is "every request is answered": the rate and in-flight bounds (tested in
        # test_control_plane) would refuse part of the fuzzer's bursts by design.
        extra="[control]\nrequests_per_second = 100000\nrequest_burst = 1000000\n"
        "max_requests_in_flight = 10000\n",
    )
    daemon = DaemonProcess(config, livekit_server, log_dir / "daemon-junk.log")
    daemon.start()
    probe = Probe("127.0.0.1", broker.port, f"{BASE}/#")  # not {DEVICES}/#: only answers
    publisher = Publisher("127.0.0.1", broker.port)
    try:
        probe.wait_sync(lambda m: m.topic == f"{BASE}/{RELAY}/connection_state"
                        and m.payload == b"connected", 0, 20)
        yield JunkDaemon(daemon, probe, publisher, Counter())
    finally:
        publisher.close()
        probe.close()
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        broker.stop()


_unique = itertools.count()


def session_topic(target: str, bad_id: str, leaf: str) -> str:
    sid = {"configured": SESSION, "unknown": f"nobody-{next(_unique)}", "invalid": bad_id}[target]
    return f"{BASE}/{sid}/{leaf}"


def events_by_topic(items: list[Seen]) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for m in items:
        if m.topic == f"{BASE}/bridge/event":
            event = strict_json(m.payload)  # every answer is JSON, whatever the input was
            found.setdefault(str(event.get("topic")), []).append(event)
    return found


def check_events(
    junk: JunkDaemon, inputs: list[tuple[str, bytes]], expected: list[str], kind: str
) -> None:
    """Each input's topic gets exactly the expected answers (bad_payload, send_failed, ...)."""
    wanted = Counter(topic for topic, _ in inputs)
    mark = junk.burst(inputs)

    def complete(items: list[Seen]) -> bool:
        found = events_by_topic(items)
        return all(len(found.get(t, [])) >= n for t, n in wanted.items())

    found = events_by_topic(junk.probe.collect(mark, complete, ANSWER_WITHIN))
    junk.record(kind, len(inputs), wanted, Counter({t: len(found.get(t, [])) for t in wanted}))
    for topic, n in wanted.items():
        answers = found.get(topic, [])
        assert len(answers) == n, (topic, n, answers)
        want = Counter(e for (t, _), e in zip(inputs, expected, strict=True) if t == topic)
        assert Counter(a["event"] for a in answers) == want, (topic, answers, want)
        assert all(isinstance(a["error"], str) and a["error"] for a in answers), answers
    junk.answered[kind] += len(inputs)


# -- the properties ----------------------------------------------------------------------------


@FUZZ
@given(BATCH(st.tuples(actions, payloads) | restore_requests, min_size=1, max_size=40))
def test_every_request_gets_one_clear_response(
    junk: JunkDaemon, requests: list[tuple[str, bytes]]
) -> None:
    inputs = [(f"{BASE}/bridge/request/{action}", payload) for action, payload in requests]
    wanted = Counter(f"{BASE}/bridge/response/{action}" for action, _ in requests)
    mark = junk.burst(inputs)

    def complete(items: list[Seen]) -> bool:
        seen = Counter(m.topic for m in items if m.topic in wanted)
        return all(seen[t] >= n for t, n in wanted.items())

    responses: dict[str, list[dict[str, Any]]] = {}
    for m in junk.probe.collect(mark, complete, ANSWER_WITHIN):
        if m.topic in wanted:
            responses.setdefault(m.topic, []).append(strict_json(m.payload))
    junk.record("request", len(requests), wanted,
                Counter({t: len(responses.get(t, [])) for t in wanted}))
    for action, payload in requests:
        topic = f"{BASE}/bridge/response/{action}"
        assert len(responses.get(topic, [])) == wanted[topic], (action, responses.get(topic))
        has_tx, tx = transaction_of(payload)
        if has_tx:  # echoed: the requester can tell its answer apart
            assert any(r.get("transaction") == tx for r in responses[topic]), (tx, responses[topic])
    for topic, answers in responses.items():
        action = topic.removeprefix(f"{BASE}/bridge/response/")
        for body in answers:
            assert body["status"] in ("ok", "error"), body
            if body["status"] == "error":
                assert isinstance(body["error"], str) and body["error"], body
                assert not body["error"].startswith("internal error"), body  # says what was wrong
            elif action not in ("health_check", "config/reload", "session/history",
                                "session/dismiss_error", "session/end", "session/restore"):
                raise AssertionError(f"junk carried out: {action} -> {body}")
    for action, payload in requests:
        if action not in ACTIONS and (
            not payload.strip() or (len(payload) <= LIMIT and json_object(payload) is not None)
        ):
            errors = [r["error"] for r in responses[f"{BASE}/bridge/response/{action}"]]
            assert any("unknown action" in e for e in errors), (action, errors)
    junk.answered["request"] += len(requests)


@FUZZ
@given(BATCH(st.tuples(payloads, targets, bad_session_ids), min_size=1, max_size=40))
def test_every_send_is_carried_out_or_answered_with_an_event(
    junk: JunkDaemon, sends: list[tuple[bytes, str, str]]
) -> None:
    inputs = [(session_topic(target, bad_id, "send"), p) for p, target, bad_id in sends]
    expected = []
    for (_, payload), (_, target, _) in zip(inputs, sends, strict=True):
        # A valid send to the configured session fails: it is not started; unknown: unknown.
        ok = target != "invalid" and send_is_valid(payload)
        expected.append("send_failed" if ok else "bad_payload")
    check_events(junk, inputs, expected, "send")


@FUZZ
@given(BATCH(st.tuples(payloads | st.sampled_from([c.encode() for c in COMMANDS]), targets,
                       bad_session_ids), min_size=1, max_size=40))
def test_every_command_is_carried_out_or_answered_with_an_event(
    junk: JunkDaemon, commands: list[tuple[bytes, str, str]]
) -> None:
    inputs, expected = [], []
    for payload, target, bad_id in commands:
        if target == "configured" and is_command(payload):
            continue  # carried out on the configured session: documented silence
        inputs.append((session_topic(target, bad_id, "command"), payload))
        ok = target == "unknown" and is_command(payload)
        expected.append("command_failed" if ok else "bad_payload")
    check_events(junk, inputs, expected, "command")


@FUZZ
@given(BATCH(payloads.filter(bool) | message_events_json.map(lambda e: e), min_size=1,
             max_size=30))
def test_every_payload_on_the_mqtt_transport_topic_is_a_message_or_a_receiver_error(
    junk: JunkDaemon, items: list[bytes | dict[str, Any]]
) -> None:
    inputs: list[tuple[str, bytes]] = []
    for item in items:
        n = next(_unique)
        payload = message_payload(item, f"dev-{n}") if isinstance(item, dict) else item
        inputs.append((f"{DEVICES}/{n}/transcript", payload))
    mark = junk.burst(inputs)

    def answers(items_seen: list[Seen]) -> tuple[set[str], set[str]]:
        errors, ids = set(), set()
        for m in items_seen:
            if m.topic == f"{BASE}/{RELAY}/error" and m.payload:
                error = strict_json(m.payload)
                assert error["kind"] == "receiver", error
                errors.add(error["message"])
            elif m.topic == f"{BASE}/{RELAY}/message":
                ids.add(strict_json(m.payload)["id"])
        return errors, ids

    def answered(topic: str, payload: bytes, errors: set[str], ids: set[str]) -> bool:
        body = json_object(payload)
        if body is not None and isinstance(body.get("id"), str) and body["id"] in ids:
            return True
        return any(f"invalid message event on {topic}:" in e for e in errors)

    def complete(items_seen: list[Seen]) -> bool:
        errors, ids = answers(items_seen)
        return all(answered(t, p, errors, ids) for t, p in inputs)

    errors, ids = answers(junk.probe.collect(mark, complete, ANSWER_WITHIN))
    missing = [(t, p[:120]) for t, p in inputs if not answered(t, p, errors, ids)]
    tally("junk mqtt transport topic (hypothesis)").add(
        len(inputs), len(inputs) if junk.alive() else 0, len(missing), 0
    )
    assert not missing, missing
    junk.answered["mqtt transport topic"] += len(inputs)


@settings(max_examples=20, deadline=None, database=None)
@given(BATCH(payloads, min_size=1, max_size=20))
def test_home_assistant_status_junk_is_ignored(junk: JunkDaemon, statuses: list[bytes]) -> None:
    mark = junk.burst([("homeassistant/status", payload) for payload in statuses])
    # The health check is answered after everything published before it was handled.
    assert junk.health_check()["status"] == "ok"
    answered = [m for m in junk.probe.seen()[mark:] if m.topic == f"{BASE}/bridge/event"
                and "homeassistant" in str(strict_json(m.payload).get("topic"))]
    tally("junk homeassistant/status (hypothesis)").add(
        len(statuses), len(statuses) if junk.alive() else 0, 0, len(answered)
    )
    assert not answered, answered  # documented silence: never an event
    assert junk.alive()
    junk.answered["homeassistant/status"] += len(statuses)


def test_each_input_is_answered_once_and_the_daemon_stays_up(junk: JunkDaemon) -> None:
    """Commands to unknown sessions (a topic each): exactly one answer each, never a second,
    not even after a grace period."""
    inputs = [(f"{BASE}/nobody-{next(_unique)}/command", b"start") for _ in range(50)]
    mark = junk.burst(inputs)
    assert junk.health_check()["status"] == "ok"
    time.sleep(1.0)  # room for a second answer to show itself
    found = events_by_topic(junk.probe.seen()[mark:])
    wanted = Counter(t for t, _ in inputs)
    outcome = junk.record("answered once", len(inputs), wanted,
                          Counter({t: len(found.get(t, [])) for t in wanted}))
    assert outcome.lost == 0 and outcome.duplicated == 0, found
    assert all(e["event"] == "command_failed" for t in wanted for e in found[t])
    assert junk.alive()


# -- memory ------------------------------------------------------------------------------------


def junk_batch(rng: random.Random, size: int) -> list[tuple[str, bytes]]:
    """A fast flood over every subscribed topic (no waiting per message)."""
    batch = []
    for _ in range(size):
        kind = rng.randrange(5)
        payload = rng.choice(EDGE_PAYLOADS[:24]) if rng.random() < 0.3 else rng.randbytes(
            rng.randrange(0, 300)
        )
        if kind == 0:
            topic = f"{BASE}/bridge/request/{rng.choice([*ACTIONS, 'no/such', 'x' * 40])}"
        elif kind == 1:
            topic = f"{BASE}/{SESSION}/send"
        elif kind == 2:
            topic = f"{BASE}/nobody-{rng.randrange(10**9)}/command"
        elif kind == 3:
            topic = f"{BASE}/Bad{rng.randrange(10**6)}/send"
        else:
            topic = "homeassistant/status"
        batch.append((topic, payload))
    return batch


def flood(junk: JunkDaemon, batch: list[tuple[str, bytes]]) -> None:
    junk.burst(batch)
    assert junk.health_check(60)["status"] == "ok"  # answered after everything before it


def test_memory_stays_bounded_under_a_flood(junk: JunkDaemon) -> None:
    rng = random.Random(7)
    flood(junk, junk_batch(rng, 2000))  # warm-up: caches, lanes, allocator arenas
    before = vm_rss_kb(junk.pid)
    for _ in range(2):
        flood(junk, junk_batch(rng, 2000))
    after = vm_rss_kb(junk.pid)
    growth_mb = (after - before) / 1024
    assert junk.alive()
    assert growth_mb < 20, f"RSS grew {growth_mb:.1f} MB over 4000 junk messages"
    tally("junk flood (memory)").add(
        6000, 6000 if junk.alive() else 0, 0, 0,
        f"RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB after 4000 more (answers to the"
        " flood are not counted: lost 0 means not measured here)",
    )


# -- random TOML at `lkbridge check` -----------------------------------------------------------

CONFIG_KEYS = [
    "mqtt", "state", "log", "plugins", "sessions", "homeassistant", "host", "port", "base_topic",
    "client_id", "username", "password", "protocol", "keepalive", "tls", "ca_file", "insecure",
    "directory", "history_limit", "level", "format", "disable", "agent_name", "autostart",
    "agent_connect_timeout", "token", "source", "url", "api_key", "api_secret", "senders",
    "receivers", "transports", "env", "file", "credential", "queue_limit", "max_payload_bytes",
]
toml_scalars = (
    st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from(["ws://127.0.0.1:7880", "minted", "literal", "chat", "5", "3.1.1", "json"])
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(CONFIG_KEYS) | st.text(min_size=1, max_size=8), inner,
                      max_size=4),
    max_leaves=12,
)
toml_docs = st.dictionaries(
    st.sampled_from(CONFIG_KEYS), toml_values, max_size=5
).map(tomli_w.dumps)
toml_texts = st.one_of(
    toml_docs,
    st.text(max_size=300),
    st.integers(4300, 6000).map(lambda n: "[mqtt]\nport = 1" + "0" * n + "\n"),
    st.integers(200, 3000).map(lambda n: "x = " + "[" * n + "]" * n + "\n"),
    st.integers(200, 3000).map(lambda n: "x = " + "{a = " * n + "1" + "}" * n + "\n"),
)


def check_output_is_well_formed(path: Path, ok: bool, text: str) -> None:
    first, *rest = text.splitlines()
    assert first.startswith(f"{path}: "), text
    if ok:
        assert " OK " in first, text
    else:
        assert "problem(s)" in first and rest, text
        assert all(line.startswith("  ") and line.strip() for line in rest), text


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=toml_texts)
def test_check_answers_any_toml_with_ok_or_its_problems(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    ok, report = check_config_file(path)  # never raises
    check_output_is_well_formed(path, ok, report)
    tally("junk TOML at lkbridge check").injected += 1
    tally("junk TOML at lkbridge check").survived += 1


@pytest.mark.parametrize("content", [
    b"[mqtt]\nport = 1" + b"0" * 5000 + b"\n",
    b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n",
    b'[sessions.a]\nagent_name = 5\n[sessions.a.token]\nsource = "nope"\n',
    b"\xff not utf-8",
    b'[mqtt]\nhost = "127.0.0.1"\n',
], ids=["huge-integer", "deep-array", "bad-values", "not-utf8", "valid"])
def test_check_cli_exits_0_or_2_without_a_traceback(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(content)
    out = subprocess.run(
        [sys.executable, "-m", "lkbridge", "check", "-c", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert out.returncode in (0, 2), (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stdout + out.stderr
    check_output_is_well_formed(path, out.returncode == 0, out.stdout + out.stderr)
