"""The MQTT-side clients and the terminal printer, against the embedded broker and a fake daemon."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from devstack.broker import EmbeddedBroker
from devstack.demo.replies import HELP, demo_reply
from devstack.demo.stack import SECRET_ENV, StackSettings, demo_config
from lkbridge.cli.clients import (
    BridgeClient,
    ClientError,
    Target,
    load_target,
    render_status,
    send,
    status,
    topic_matches,
)
from lkbridge.cli.console import TranscriptPrinter
from lkbridge.config.files import load_config
from lkbridge.mqtt.client import MqttClient, MqttSettings

pytestmark = pytest.mark.timeout(30)


def event(msg_id: str, text: str, final: bool = False, kind: str = "agent_transcript") -> dict[str, Any]:
    return {"id": msg_id, "type": kind, "text": text, "final": final, "session": "demo",
            "timestamp": "2026-01-01T00:00:00.000+00:00"}


@pytest.fixture(autouse=True)
def _no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_printer_extends_the_growing_line_and_rewrites_a_replaced_one() -> None:
    out = FakeTty()
    printer = TranscriptPrinter(out, prompt=True)
    printer.prompt()
    printer.expect_own("hi")
    printer.message(event("u1", "hi", True, "user_input"))  # our own loopback: not shown
    printer.message(event("a1", "Hel"))
    printer.message(event("a1", "Hello"))
    printer.message(event("a1", "Hello there", final=True))
    printer.message(event("u2", "from elsewhere", True, "user_input"))
    printer.message(event("a2", "one"))
    printer.message(event("a2", "two", final=True))  # replaced, not extended
    assert out.getvalue() == (
        "you: "  # the prompt, cleared when the answer starts
        "\r\x1b[Kagent: Hello there\n"  # written as "Hel", "lo", " there"
        "you: \r\x1b[Kyou: from elsewhere\n"  # sent by another client: shown
        "you: \r\x1b[Kagent: one\r\x1b[Kagent: two\n"  # replaced text: the line is rewritten
        "you: "
    )


def test_terminal_printer_writes_only_the_new_part_of_a_growing_answer() -> None:
    out = FakeTty()
    printer = TranscriptPrinter(out, tty=True)
    for text in ("You", "You said", "You said: hi"):
        printer.message(event("a1", text))
    printer.message(event("a1", "You said: hi", final=True))
    assert out.getvalue() == "agent: You said: hi\n"


def test_terminal_labels_are_coloured_unless_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR")
    out = FakeTty()
    TranscriptPrinter(out).message(event("a1", "hi", final=True))
    assert out.getvalue() == "\x1b[36magent\x1b[0m: hi\n"


def test_a_peers_escape_sequences_never_reach_the_terminal() -> None:
    """Agent text and broker payloads are a stranger's: ESC (title, clipboard via OSC 52,
    cursor moves) and CR (overwriting what was shown) must not reach the terminal as such."""
    evil = "ok\x1b]52;c;cm0gLXJmIH4=\x07\rforged\x1b[2J"
    out = FakeTty()
    printer = TranscriptPrinter(out, tty=True)
    printer.message(event("a1", evil, final=True) | {"session": "demo\x1b[8m"})
    printer.note(f"error: {evil}")
    shown = out.getvalue()
    assert "\x07" not in shown and "forged" in shown and "\r" not in shown
    assert "\x1b" not in shown.replace("\r\x1b[K", "")  # only the printer's own line clearing
    plain = io.StringIO()
    TranscriptPrinter(plain).message(event("a1", "two\nlines\tand a tab", final=True))
    assert plain.getvalue() == "agent: two\nlines\tand a tab\n"  # newline and tab are kept


def test_plain_printer_prints_final_lines_and_notes_cut_off_answers() -> None:
    out = io.StringIO()
    printer = TranscriptPrinter(out)
    printer.message(event("a1", "partial"))
    printer.message(event("a1", "partial answer"))
    printer.message(event("u1", "stop", True, "user_input"))
    printer.message(event("a2", "Okay", final=True))
    printer.message(event("t1", "hello there", True, "user_transcript"))
    assert out.getvalue().splitlines() == [
        "agent: partial answer …(cut off)", "you: stop", "agent: Okay", "user: hello there",
    ]


def test_state_notes_only_on_changes() -> None:
    out = io.StringIO()
    printer = TranscriptPrinter(out)
    connected = {"connection_state": "connected", "agent": {"lifecycle": "connected"}, "error": None}
    printer.state(connected)
    printer.state({**connected, "agent": {"lifecycle": "connected", "state": "thinking"}})
    printer.state({"connection_state": "disconnected", "agent": None,
                   "error": {"kind": "connection", "message": "server went away"}})
    assert out.getvalue().splitlines() == [
        "· session connected, agent connected",
        "· session disconnected, agent absent; error: server went away",
    ]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("a/+/state", "a/x/state", True), ("a/#", "a/b/c", True), ("a/+", "a/b/c", False),
    ("a/b", "a/b", True), ("a/+/state", "a/x/message", False),
])
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


def test_load_target_reads_mqtt_settings_and_flags_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[mqtt]\nhost = "broker.lan"\nport = 1884\nbase_topic = "home/lk"\n'
                      'client_id = "daemon-id"\nusername = "me"\npassword = { env = "PW" }\n'
                      'protocol = "3.1.1"\n')
    monkeypatch.setenv("PW", "s3cret-value")
    target = load_target(str(config))
    s = target.settings
    assert (s.host, s.port, s.username, s.password, s.protocol) == (
        "broker.lan", 1884, "me", "s3cret-value", "3.1.1")
    assert target.base_topic == "home/lk" and target.topic("demo", "send") == "home/lk/demo/send"
    assert s.client_id != "daemon-id" and s.client_id.startswith("lkbridge-cli-")
    assert not s.persistent_session
    other = load_target(str(config), host="127.0.0.1", port=1, base_topic="x")
    assert (other.settings.host, other.settings.port, other.base_topic) == ("127.0.0.1", 1, "x")
    with pytest.raises(ClientError, match="must not contain"):
        load_target(str(config), base_topic="a/#")
    monkeypatch.delenv("PW")
    with pytest.raises(ClientError, match=r"mqtt\.password: environment variable PW is not set"):
        load_target(str(config))


def test_load_target_without_a_config_uses_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LKBRIDGE_CONFIG", raising=False)
    if Path("/etc/lkbridge/config.toml").exists():
        pytest.skip("this machine has /etc/lkbridge/config.toml")
    target = load_target(None)
    assert (target.settings.host, target.settings.port, target.base_topic) == (
        "127.0.0.1", 1883, "lkbridge")
    with pytest.raises(ClientError, match="file does not exist"):
        load_target(str(tmp_path / "missing.toml"))
    # a file named by $LKBRIDGE_CONFIG must exist too (no silent defaults)
    monkeypatch.setenv("LKBRIDGE_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(ClientError, match="file does not exist"):
        load_target(None)


def test_render_status_table() -> None:
    text = render_status({
        "broker": "127.0.0.1:1883", "base_topic": "lkbridge",
        "bridge": {"state": "online", "info": {"version": "0.1.0", "sessions": ["demo", "bad"]}},
        "sessions": {
            "demo": {"state": {"connection_state": "connected", "room": "r1",
                               "agent": {"lifecycle": "connected", "state": "listening"}},
                     "messages": 2, "last_message": event("a", "line one\nline two", True)},
            "bad": {"state": {"connection_state": "disconnected", "agent": None,
                              "error": {"kind": "config", "message": "no such plugin"}}},
        },
    })
    lines = text.splitlines()
    assert lines[0] == "lkbridge 0.1.0: online on 127.0.0.1:1883 (base topic 'lkbridge'), 2 session(s)"
    assert lines[2].split() == ["SESSION", "CONNECTION", "AGENT", "ROOM", "MESSAGES", "LAST",
                                "MESSAGE"]
    assert lines[3].split() == ["demo", "connected", "listening", "r1", "2", "agent_transcript:",
                                "line", "one", "line", "two"]
    assert lines[4].split() == ["bad", "disconnected", "-", "-", "-", "-"]
    assert "  bad: config error: no such plugin" in lines
    forged = render_status({
        "broker": "b", "base_topic": "lkbridge", "bridge": {"state": "online", "info": None},
        "sessions": {"x": {"state": {"connection_state": "\x1b[2Jconnected", "room": "r\rr",
                                     "error": {"message": "\x1b]0;title\x07"}}}},
    })
    assert "\x1b" not in forged and "\r" not in forged and "\x07" not in forged


def test_demo_replies() -> None:
    noon = datetime(2026, 1, 2, 12, 34, 56)
    assert demo_reply("What time is it?", lambda: noon) == "It is 12:34:56 here."
    assert demo_reply("what day is it", lambda: noon) == "Today is Friday, 02 January 2026."
    assert demo_reply("help") == HELP
    assert demo_reply("count one two three") == "That is 3 words."
    assert demo_reply("reverse hello world") == "world hello"
    assert demo_reply("repeat after me: lights on") == "lights on"
    assert demo_reply("what is 6 * 7") == "6 * 7 = 42"
    assert demo_reply("7 / 0") == "I cannot divide by zero."
    assert demo_reply("hello").startswith("Hello! I am the lkbridge demo agent")
    assert demo_reply("turn on   the lights") == "You said: turn on the lights"
    assert demo_reply("sayonara") == "You said: sayonara"


def test_demo_config_is_valid_and_references_the_secret(tmp_path: Path) -> None:
    settings = StackSettings(tmp_path, base_topic="demo-x")
    path = tmp_path / "config.toml"
    path.write_text(demo_config(settings, 1999, "ws://127.0.0.1:7880", "devkey"))
    config = load_config(path, environ={SECRET_ENV: "the-secret"}, resolve_secrets=True)
    assert (config.mqtt.port, config.mqtt.base_topic) == (1999, "demo-x")
    token = config.sessions["demo"].token
    assert token.api_secret.reveal({SECRET_ENV: "the-secret"}) == "the-secret"  # type: ignore[union-attr]
    assert "the-secret" not in path.read_text()
    assert config.sessions["demo"].agent_name == "lkbridge-demo"


async def test_reply_watcher_finds_the_answer_whichever_arrives_first() -> None:
    from lkbridge.cli.clients import ReplyWatcher
    from lkbridge.mqtt.client import IncomingMessage

    def msg(e: dict[str, Any]) -> IncomingMessage:
        return IncomingMessage("lkb/demo/message", json.dumps(e).encode(), 1, False)

    events = [event("old", "still going") | {"reply_to": "m0"},
              event("m1", "hi", True, "user_input"),
              event("old", "still going, done", True) | {"reply_to": "m0"},
              event("a1", "Hel") | {"reply_to": "m1"},
              event("a1", "Hello", True) | {"reply_to": "m1"}]
    # The daemon's acknowledgement (with our message id) before the events, and after them.
    early = ReplyWatcher("demo")
    early.sent("m1")
    for e in events:
        early.on_message(msg(e))
    late = ReplyWatcher("demo")
    for e in events:
        late.on_message(msg(e))
    late.sent("m1")
    assert early.answer.result() == late.answer.result()
    assert (early.answer.result().status, early.answer.result().text) == ("answered", "Hello")
    other = ReplyWatcher("kitchen")
    for e in events:
        other.on_message(msg(e))
    other.sent("m1")
    assert not other.answer.done(), "another session's events are ignored"


async def test_reply_watcher_reports_interrupted_and_never_another_messages_answer() -> None:
    from lkbridge.cli.clients import ReplyWatcher
    from lkbridge.mqtt.client import IncomingMessage

    def msg(e: dict[str, Any]) -> IncomingMessage:
        return IncomingMessage("lkb/demo/message", json.dumps(e).encode(), 1, False)

    watcher = ReplyWatcher("demo")
    watcher.sent("mine")
    for e in [event("mine", "question", True, "user_input"),
              event("theirs", "another client's", True, "user_input"),
              event("a2", "You said: another client's", True) | {"reply_to": "theirs"}]:
        watcher.on_message(msg(e))
    assert not watcher.answer.done(), "the answer to another message is not ours"
    watcher.on_message(msg({"event": "unanswered", "id": "mine", "reason": "interrupted",
                            "superseded_by": "theirs", "session": "demo"}))
    assert watcher.answer.result().status == "interrupted"
    for reason, expected in [("ended", "ended"), ("timed_out", "unanswered")]:
        other = ReplyWatcher("demo")
        other.sent("x")
        other.on_message(msg({"event": "unanswered", "id": "x", "reason": reason,
                              "session": "demo"}))
        assert other.answer.result().status == expected


async def test_reply_watcher_keeps_no_events_once_its_id_is_known() -> None:
    """A busy session sends thousands of events while we wait: each is looked at once, not
    kept and scanned again with every later one."""
    from lkbridge.cli.clients import ReplyWatcher
    from lkbridge.mqtt.client import IncomingMessage

    watcher = ReplyWatcher("demo")
    watcher.sent("mine")
    for i in range(5000):
        payload = json.dumps(event(f"a{i}", "chatter", True) | {"reply_to": f"other{i}"})
        watcher.on_message(IncomingMessage("lkb/demo/message", payload.encode(), 1, False))
    assert watcher._events == [] and not watcher.answer.done()
    payload = json.dumps(event("a", "Hello", True) | {"reply_to": "mine"})
    watcher.on_message(IncomingMessage("lkb/demo/message", payload.encode(), 1, False))
    assert watcher.answer.result().text == "Hello"


class FakeDaemon:
    """Answers session/send and session/history like the daemon, and streams a reply."""

    def __init__(self, port: int, base: str = "lkb") -> None:
        self.base = base
        self.client = MqttClient(MqttSettings(host="127.0.0.1", port=port, client_id="fake"))

    async def run(self) -> None:
        client = self.client
        await client.subscribe(f"{self.base}/bridge/request/#")
        await client.publish(f"{self.base}/bridge/state", '{"state":"online"}', retain=True)
        await client.publish(f"{self.base}/bridge/info", json.dumps(
            {"version": "9.9", "sessions": ["demo"]}), retain=True)
        await client.publish(f"{self.base}/demo/state", json.dumps(
            {"session": "demo", "connection_state": "connected", "room": "r",
             "agent": {"lifecycle": "connected", "state": "listening"}}), retain=True)
        async for msg in client.messages():
            action = msg.topic.split("/bridge/request/", 1)[1]
            body = json.loads(msg.payload)
            tx = body.get("transaction")
            answer: dict[str, Any]
            if body.get("session") != "demo":
                answer = {"status": "error", "error": f"unknown session {body.get('session')!r}"}
            elif action == "session/send":
                answer = {"status": "ok", "data": {"id": "m1", "text": body["text"],
                                                   "duplicate": body.get("id") == "dup"}}
                await self._reply(body["text"])
            else:
                answer = {"status": "ok", "data": {"session": "demo", "messages": [
                    event("a0", "earlier answer", True)]}}
            await client.publish(f"{self.base}/bridge/response/{action}",
                                 json.dumps({**answer, "transaction": tx}))

    async def _reply(self, text: str) -> None:
        topic = f"{self.base}/demo/message"
        older = {"reply_to": "m0"}
        ours = {"reply_to": "m1"}
        await self.client.publish(topic, json.dumps(event("old", "an older answer, going") | older))
        await self.client.publish(topic, json.dumps(event("m1", text, True, "user_input")))
        for part in ("You", "You said: ", f"You said: {text}"):
            await self.client.publish(topic, json.dumps(event("a1", part) | ours))
        await self.client.publish(topic, json.dumps(event("old", "an older answer", True) | older))
        if text.startswith("[cut]"):
            await self.client.publish(f"{self.base}/demo/event", json.dumps({
                "event": "unanswered", "id": "m1", "reason": "interrupted", "session": "demo"}))
            return
        await self.client.publish(topic, json.dumps(event("a1", f"You said: {text}", True) | ours))


@pytest.fixture
async def daemon_target() -> AsyncIterator[Target]:
    async with EmbeddedBroker() as broker:
        fake = FakeDaemon(broker.port)
        async with fake.client:
            task = asyncio.create_task(fake.run())
            await fake.client.wait_connected(5)
            await asyncio.sleep(0.1)
            try:
                yield Target(MqttSettings(host="127.0.0.1", port=broker.port,
                                          client_id="cli-test", persistent_session=False), "lkb")
            finally:
                task.cancel()


async def test_send_prints_the_acknowledgement_or_waits_for_the_answer(daemon_target: Target) -> None:
    out = io.StringIO()
    assert await send(daemon_target, "demo", "hi", out=out) == 0
    assert out.getvalue() == "sent to demo: message m1\n"
    out = io.StringIO()
    assert await send(daemon_target, "demo", "hi", wait=True, out=out) == 0
    assert out.getvalue() == "You said: hi\n", "the answer that came after our message"
    out = io.StringIO()
    assert await send(daemon_target, "demo", "hi", send_id="dup", wait=True, out=out) == 0
    assert "not sent again" in out.getvalue()
    with pytest.raises(ClientError, match="unknown session 'nope'"):
        await send(daemon_target, "nope", "hi")
    out, err = io.StringIO(), io.StringIO()
    assert await send(daemon_target, "demo", "[cut] hi", wait=True, out=out, err=err) == 3
    assert out.getvalue() == ""
    assert err.getvalue().startswith("lkbridge send: interrupted: a newer message")


async def test_status_collects_retained_state_and_the_last_message(daemon_target: Target) -> None:
    out = io.StringIO()
    assert await status(daemon_target, as_json=True, out=out) == 0
    data = json.loads(out.getvalue())
    assert data["bridge"]["state"] == "online" and data["bridge"]["info"]["version"] == "9.9"
    assert data["sessions"]["demo"]["state"]["room"] == "r"
    assert data["sessions"]["demo"]["messages"] == 1
    assert data["sessions"]["demo"]["last_message"]["text"] == "earlier answer"


async def test_requests_without_a_daemon_say_so() -> None:
    async with EmbeddedBroker() as broker:
        target = Target(MqttSettings(host="127.0.0.1", port=broker.port, client_id="c",
                                     persistent_session=False), "nobody-home")
        async with BridgeClient(target) as client:
            with pytest.raises(ClientError, match="no lkbridge daemon has published on"):
                await client.request("health_check", {}, timeout=30)  # gives up after 2 s
            with pytest.raises(ClientError, match="did not answer in time"):
                client.latest["nobody-home/bridge/state"] = b'{"state":"online"}'
                await client.request("health_check", {}, timeout=0.3)
        out = io.StringIO()
        assert await status(target, out=out) == 1
        assert out.getvalue().startswith("lkbridge: not seen on 127.0.0.1:")


async def test_chat_waits_for_the_answer_to_its_own_text_not_any_final_answer() -> None:
    """An earlier reply cut off by our text ends final after we sent: that is not our answer
    (`lkbridge chat` with piped input quit before its own answer came)."""
    out = io.StringIO()
    printer = TranscriptPrinter(out)
    printer.expect_own("what is 2 + 2")
    assert not printer.reply_done.is_set()
    printer.sent("u1")
    printer.message(event("a0", "You said:", True) | {"reply_to": "u0"})  # an older question's
    assert not printer.reply_done.is_set()
    printer.message(event("a1", "You said: what is 2 + 2", True) | {"reply_to": "u1"})
    assert printer.reply_done.is_set()
    # an answer may come before the daemon's response names our id
    printer.expect_own("again")
    printer.message(event("a2", "You said: again", True) | {"reply_to": "u2"})
    assert not printer.reply_done.is_set()
    printer.sent("u2")
    assert printer.reply_done.is_set()
    # a text of ours that will not be answered is not waited for
    printer.expect_own("[silent] hello?")
    printer.sent("u3")
    printer.unanswered({"event": "unanswered", "id": "u3", "reason": "timed_out"})
    assert printer.reply_done.is_set()
    assert out.getvalue().splitlines()[-1] == "· no answer to your message: timed_out"
    printer.expect_own("not sent")
    printer.sent(None)
    assert printer.reply_done.is_set()
