"""Tools the fault tests share: a persistent broker, a fast publisher, requests, a fault ledger."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sqlite3
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devstack.mosquitto import find_mosquitto
from devstack.procs import free_port, kill_process, stop_process, wait_for_tcp
from tests.support.mqtt_probe import MqttProbe, Seen

# -- the fault ledger: what each fault test injected, what the daemon survived, what was lost --


@dataclass(frozen=True)
class Outcome:
    """One fault test's result, as an observer saw it."""

    lost: int
    duplicated: int


@dataclass
class FaultTally:
    """One fault kind: what was injected, how often the process came through (alive, and
    answering), and what an observer found missing or repeated among what it should have seen."""

    injected: int = 0
    survived: int = 0
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)

    def record(
        self, *, injected: int, survived: int, expected: Iterable[str] = (),
        seen: Iterable[str] = (), note: str = "",
    ) -> Outcome:  # fmt: skip
        """Add a test's outcome; call it *before* asserting, so a failure is in the ledger too.

        `expected`: what should have arrived (ids, texts); `seen`: everything the observer saw
        of those, repeats included. lost = expected but never seen; duplicated = seen again.
        """
        wanted = set(expected)
        counts = Counter(x for x in seen if x in wanted)
        outcome = Outcome(
            lost=sum(1 for x in wanted if not counts[x]),
            duplicated=sum(n - 1 for n in counts.values() if n > 1),
        )
        return self.add(injected, survived, outcome.lost, outcome.duplicated, note)

    def add(self, injected: int, survived: int, lost: int, duplicated: int, note: str = "") -> Outcome:
        """Add counts an observer-based check computed itself (see record())."""
        self.injected += injected
        self.survived += survived
        self.lost += lost
        self.duplicated += duplicated
        if note:
            self.notes.append(note)
        return Outcome(lost, duplicated)


LEDGER: dict[str, FaultTally] = {}


def tally(name: str) -> FaultTally:
    """The ledger line of one fault kind (printed at the end of the run, and in test-logs/)."""
    return LEDGER.setdefault(name, FaultTally())


# -- a broker that keeps its sessions over a restart ------------------------------------------


@dataclass
class PersistentMosquitto:
    """Mosquitto with on-disk persistence, as Debian ships it: a clean restart keeps every
    persistent session, its subscriptions and its queued QoS 1 messages. Its sockets send at
    once (TCP_NODELAY): a request/response round trip takes a millisecond, not Nagle's 40."""

    directory: Path
    host: str = "127.0.0.1"
    port: int = 0
    persistence: bool = True
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            # Started as root, Mosquitto would switch to the user "mosquitto", who cannot write
            # its persistence file into the test's directory.
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            f"persistence {'true' if self.persistence else 'false'}\n"
            f"persistence_location {self.directory}/\n"
            "set_tcp_nodelay true\n"
            "autosave_interval 0\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 0\n"
            "log_dest stdout\n"
            "connection_messages true\n"
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_for_tcp(self.host, self.port, 10, self._proc, "mosquitto", self.log_path)

    def stop(self) -> None:
        """SIGTERM: Mosquitto writes its persistence file, then exits."""
        if self._proc is not None:
            stop_process(self._proc)

    def kill(self) -> None:
        if self._proc is not None:
            kill_process(self._proc)


# -- MQTT helpers ------------------------------------------------------------------------------


class Publisher:
    """A paho client that publishes QoS 1 without waiting per message (the load generator)."""

    def __init__(self, host: str, port: int) -> None:
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.max_inflight_messages_set(0)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"publisher could not connect to {host}:{port}")
        self.pending: list[mqtt.MQTTMessageInfo] = []

    def publish(self, topic: str, payload: bytes | str, *, expiry: int | None = None) -> None:
        props = None
        if expiry is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.MessageExpiryInterval = expiry
        info = self.client.publish(topic, payload, qos=1, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish to {topic!r} refused: {mqtt.error_string(info.rc)}")
        self.pending.append(info)

    def wait_acknowledged(self, timeout: float = 20.0) -> None:
        """Every publish so far has its PUBACK (the broker has it)."""
        deadline = time.monotonic() + timeout
        for info in self.pending:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise AssertionError(f"publish {info.mid} not acknowledged within {timeout} s")
        self.pending.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PersistentProbe(MqttProbe):
    """A probe whose client keeps its session (v5 session expiry) and reconnects at once, so
    the broker queues for it over a restart and it sees what a daemon publishes right after."""

    def __init__(self, host: str, port: int, *filters: str) -> None:
        # Not MqttProbe.__init__: the same state, but a persistent session and fast reconnects.
        self.messages = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._filters = filters or ("#",)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.05, 0.5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 300
        self.client.connect(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise RuntimeError(f"probe could not connect to {host}:{port}")


async def request(
    probe: MqttProbe, base: str, action: str, body: dict[str, Any] | None = None,
    *, timeout: float = 15.0,
) -> dict[str, Any]:
    """One request/response round trip, matched by a fresh transaction.

    `session/history` without `before` is the whole history: its pages, walked back and joined.
    """
    if action == "session/history" and "before" not in (body or {}):
        first = await _request_once(probe, base, action, {"limit": 200, **(body or {})}, timeout)
        while first.get("status") == "ok" and first["data"].get("next") is not None:
            page = await _request_once(
                probe, base, action, {**(body or {}), "limit": 200, "before": first["data"]["next"]},
                timeout,
            )
            if page.get("status") != "ok":
                return page
            first["data"]["messages"] = page["data"]["messages"] + first["data"]["messages"]
            first["data"]["next"] = page["data"]["next"]
        return first
    return await _request_once(probe, base, action, body, timeout)


async def _request_once(
    probe: MqttProbe, base: str, action: str, body: dict[str, Any] | None, timeout: float
) -> dict[str, Any]:
    txn = uuid.uuid4().hex[:10]
    mark = probe.mark()
    probe.publish(f"{base}/bridge/request/{action}", {**(body or {}), "transaction": txn})
    reply = await probe.wait_for(
        f"{base}/bridge/response/{action}",
        lambda m: m.json().get("transaction") == txn, after=mark, timeout=timeout,
    )
    return dict(reply.json())


def state_is(connection: str, agent_state: str | None = None) -> Callable[[Seen], bool]:
    def check(m: Seen) -> bool:
        if not m.payload:
            return False
        data = m.json()
        agent = data.get("agent") or {}
        return data.get("connection_state") == connection and (
            agent_state is None or agent.get("state") == agent_state
        )

    return check


def message_events(probe: MqttProbe, base: str, session: str) -> list[dict[str, Any]]:
    return [m.json() for m in probe.seen(f"{base}/{session}/message")]


def bridge_events(probe: MqttProbe, base: str, name: str | None = None) -> list[dict[str, Any]]:
    events = [m.json() for m in probe.seen(f"{base}/bridge/event")]
    return [e for e in events if name is None or e.get("event") == name]


async def eventually(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether predicate became true within timeout (the caller asserts, with details)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# -- the daemon's state directory and process --------------------------------------------------


def integrity_check(database: Path) -> list[str]:
    """PRAGMA integrity_check on a read-only connection: ["ok"] when the file is sound."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        return [str(row[0]) for row in db.execute("PRAGMA integrity_check")]
    finally:
        db.close()


def stored_finals(database: Path, session: str) -> int:
    """How many final messages the daemon's store holds for a session (read-only, live)."""
    if not database.exists():
        return 0
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5.0)
    try:
        row = db.execute(
            "SELECT COUNT(*) FROM messages WHERE session_id = ? AND final = 1", (session,)
        ).fetchone()
        return int(row[0])
    finally:
        db.close()


def vm_rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def duplicates(items: list[str]) -> dict[str, int]:
    return {k: n for k, n in Counter(items).items() if n > 1}


def strict_json(payload: bytes) -> Any:
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON, and the bytes must be UTF-8."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(payload.decode("utf-8"), parse_constant=refuse)
