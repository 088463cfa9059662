"""Home Assistant Assist through Wyoming: the `wyoming` package's own client against the daemon."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from wyoming.asr import Transcript
from wyoming.client import AsyncTcpClient
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import Describe, Info

from devstack.livekit_server import LiveKitServer
from devstack.mosquitto import Mosquitto
from tests.support.daemon_proc import DaemonProcess, daemon_config, session_toml
from tests.support.mqtt_probe import MqttProbe

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wyoming_table(session_id: str, port: int, **options: Any) -> str:
    lines = [f"[sessions.{session_id}.wyoming]", f'host = "{HOST}"', f"port = {port}"]
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


async def wait_listening(port: int, proc: DaemonProcess, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()[-3000:]
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"nothing listens on {port}") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def ask(port: int, text: str, conversation_id: str | None = None,
              timeout: float = 30.0) -> Event:  # fmt: skip
    """What HA's Wyoming conversation agent does: one connection, transcript, read to the answer."""
    context = {"conversation_id": conversation_id} if conversation_id else None
    async with AsyncTcpClient(HOST, port) as client:
        await client.write_event(Transcript(text, context=context, language="en").event())
        while True:
            event = await asyncio.wait_for(client.read_event(), timeout)
            assert event is not None, "connection closed before the answer"
            if Handled.is_type(event.type) or NotHandled.is_type(event.type):
                return event


def start_daemon(tmp_path: Path, broker: Mosquitto, server: LiveKitServer,
                 daemon_factory: Callable[[Path], DaemonProcess], sessions: dict[str, tuple[str | None, int, dict[str, Any], dict[str, Any]]],
                 base: str) -> DaemonProcess:  # fmt: skip
    tables = ""
    for sid, (agent_name, port, session_options, wyoming_options) in sessions.items():
        tables += session_toml(sid, server, agent_name, **session_options)
        tables += wyoming_table(sid, port, **wyoming_options)
    extra = '[homeassistant]\nenabled = false\n'
    return daemon_factory(daemon_config(tmp_path, broker.port, tables, base_topic=base, extra=extra))


@pytest.fixture
def base() -> str:
    return f"wy-{uuid.uuid4().hex[:8]}"


async def test_describe_then_questions_get_their_own_answers(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[[Path], DaemonProcess], base: str,
) -> None:  # fmt: skip
    """describe → info with one installed handle program; a question → its own final answer,
    correlated in the MQTT message events (reply_to, conversation_id); questions at once on
    one session and on two sessions each get their own answer."""
    agent = await scripted_agent(chunk_size=4, chunk_delay=0.02)
    other = await scripted_agent(reply=lambda text: f"Kitchen heard: {text}")
    porch, kitchen = free_port(), free_port()
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        proc = start_daemon(tmp_path, mqtt_broker, livekit_server, daemon_factory, {
            "porch": (agent.agent_name, porch, {}, {"name": "Porch agent", "languages": ["en", "de"]}),
            "kitchen": (other.agent_name, kitchen, {}, {}),
        }, base)  # fmt: skip
        await wait_listening(porch, proc)
        await wait_listening(kitchen, proc)

        async with AsyncTcpClient(HOST, porch) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 5)
        assert event is not None and Info.is_type(event.type)
        info = Info.from_event(event)
        assert [p.name for p in info.handle] == ["Porch agent"]
        program = info.handle[0]
        assert program.installed and program.models[0].installed
        assert sorted(program.models[0].languages) == ["de", "en"]
        assert not (info.asr or info.tts or info.wake or info.intent) and info.satellite is None

        answer = await ask(porch, "what time is it", conversation_id="01HCONV")
        assert Handled.is_type(answer.type), answer
        assert Handled.from_event(answer).text == "You said: what time is it"
        assert answer.data.get("context", {}).get("conversation_id") == "01HCONV"

        # The MQTT side may lag behind the Wyoming answer: wait for the final reply there.
        reply = (await probe.wait_for(f"{base}/porch/message", lambda m: bool(m.payload) and
                                      m.json()["type"] == "agent_transcript" and m.json()["final"],
                                      timeout=15)).json()  # fmt: skip
        events = [m.json() for m in probe.seen(f"{base}/porch/message") if m.payload]
        question = next(e for e in events if e["type"] == "user_input")
        assert question["text"] == "what time is it"
        assert reply["reply_to"] == question["id"]
        assert reply["conversation_id"] == "01HCONV"

        # Two questions at once on one session (answered in turn, neither interrupts the
        # other) and one on another session at the same time.
        answers = await asyncio.gather(
            ask(porch, "first question"), ask(porch, "second question"),
            ask(kitchen, "third question"),
        )  # fmt: skip
        assert [Handled.from_event(a).text for a in answers] == [
            "You said: first question", "You said: second question",
            "Kitchen heard: third question",
        ]  # fmt: skip
    finally:
        probe.close()


async def test_no_answer_is_not_handled_with_a_sentence(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[[Path], DaemonProcess], base: str,
    unique_name: Callable[[str], str],
) -> None:  # fmt: skip
    """Empty question, session not started, agent that never comes, agent that never answers,
    an answer interrupted by another message, the session ended mid-answer, junk: each a
    `not-handled` (or `error`) a person can hear, and the server keeps serving."""
    silent = await scripted_agent(reply=lambda text: None)
    slow = await scripted_agent(chunk_size=2, chunk_delay=0.2)
    ports = {name: free_port() for name in ("idle", "absent", "silent", "slow", "ending")}
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        proc = start_daemon(tmp_path, mqtt_broker, livekit_server, daemon_factory, {
            "idle": (slow.agent_name, ports["idle"], {"autostart": False}, {}),
            "absent": (unique_name("nobody"), ports["absent"], {"agent_connect_timeout": 2}, {}),
            "silent": (silent.agent_name, ports["silent"], {}, {"answer_timeout": 3}),
            "slow": (slow.agent_name, ports["slow"], {}, {}),
            "ending": (slow.agent_name, ports["ending"], {}, {}),
        }, base)  # fmt: skip
        for port in ports.values():
            await wait_listening(port, proc)

        def not_handled(event: Event) -> str:
            assert NotHandled.is_type(event.type), event
            text = NotHandled.from_event(event).text or ""
            assert text.startswith("Sorry, ") and text.endswith("."), text
            return str(event.data["context"]["reason"])

        assert not_handled(await ask(ports["slow"], "   ")) == "empty"
        assert not_handled(await ask(ports["idle"], "are you there")) == "not_running"
        assert not_handled(await ask(ports["absent"], "are you there")) == "agent_unavailable"
        assert not_handled(await ask(ports["silent"], "say nothing")) == "timeout"

        # Interrupted: another message reaches the agent while it is answering.
        question = asyncio.create_task(ask(ports["slow"], "tell me a long story"))
        await probe.wait_for(f"{base}/slow/message", lambda m: bool(m.payload)
                             and m.json()["type"] == "agent_transcript", timeout=20)  # fmt: skip
        probe.publish(f"{base}/slow/send", "stop, something else")
        assert not_handled(await question) == "interrupted"

        # The session is ended (HA's End button) while the agent is answering.
        question = asyncio.create_task(ask(ports["ending"], "tell me another long story"))
        await probe.wait_for(f"{base}/ending/message", lambda m: bool(m.payload)
                             and m.json()["type"] == "agent_transcript", timeout=20)  # fmt: skip
        probe.publish(f"{base}/ending/command", "end")
        assert not_handled(await question) == "ended"

        # Junk: a header that is not JSON gets an `error` event and the connection closes.
        reader, writer = await asyncio.open_connection(HOST, ports["slow"])
        writer.write(b"this is not json\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert json.loads(line)["type"] == "error"
        assert await asyncio.wait_for(reader.read(), 5) is not None
        writer.close()

        # Still serving.
        answer = await ask(ports["slow"], "hi")
        assert Handled.from_event(answer).text == "You said: hi"
    finally:
        probe.close()


async def test_client_leaving_mid_answer_and_old_clients(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[[Path], DaemonProcess], base: str,
) -> None:  # fmt: skip
    """A client that hangs up mid-answer harms nothing; a client writing the 1.7-era wire form
    (no select-program, reads only `handled`) gets exactly one `handled` and nothing else; a
    newer client's select-program is ignored."""
    agent = await scripted_agent(chunk_size=2, chunk_delay=0.1)
    port = free_port()
    proc = start_daemon(tmp_path, mqtt_broker, livekit_server, daemon_factory,
                        {"porch": (agent.agent_name, port, {}, {})}, base)  # fmt: skip
    await wait_listening(port, proc)

    client = AsyncTcpClient(HOST, port)
    await client.connect()
    await client.write_event(Transcript("I will not wait for this").event())
    await asyncio.sleep(0.5)
    await client.disconnect()

    answer = await ask(port, "and this one")
    assert Handled.from_event(answer).text == "You said: and this one"

    # 1.7-era wire form written by hand: header line with version 1.7.2, data after it.
    data = json.dumps({"text": "old client", "context": {"conversation_id": "c-old"}}).encode()
    header = {"type": "transcript", "version": "1.7.2", "data_length": len(data)}
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(json.dumps(header).encode() + b"\n" + data)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 30)
    reply = json.loads(line)
    assert reply["type"] == "handled"
    body = json.loads(await reader.readexactly(reply["data_length"]))
    assert body["text"] == "You said: old client"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readline(), 1.0)  # nothing streamed after `handled`
    writer.close()

    # A newer client names the program first; a server that does not know the event ignores it.
    async with AsyncTcpClient(HOST, port) as newer:
        await newer.write_event(Event(type="select-program", data={"name": "lkbridge porch"}))
        await newer.write_event(Transcript("new client").event())
        event = await asyncio.wait_for(newer.read_event(), 30)
    assert event is not None and Handled.from_event(event).text == "You said: new client"
    assert "wyoming_client_left" in proc.log_text()


async def test_an_earlier_reply_finishing_late_is_not_the_answer(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    scripted_agent: Callable[..., Any], daemon_factory: Callable[[Path], DaemonProcess], base: str,
) -> None:  # fmt: skip
    """The answer is the reply to the question's own message (reply_to), not merely the next
    final agent message: a reply to an earlier MQTT message that ends while the question waits
    is skipped."""
    agent = await scripted_agent(reply=lambda text: None)  # the test speaks for the agent
    port = free_port()
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        proc = start_daemon(tmp_path, mqtt_broker, livekit_server, daemon_factory,
                            {"porch": (agent.agent_name, port, {}, {})}, base)  # fmt: skip
        await wait_listening(port, proc)
        job = await agent.wait_for_job(20)
        await probe.wait_for(f"{base}/porch/agent_state", lambda m: m.text == "listening",
                             timeout=20)  # fmt: skip
        probe.publish(f"{base}/porch/send", "an earlier message")
        assert (await asyncio.wait_for(job.chat.get(), 15)).text == "an earlier message"
        earlier = asyncio.create_task(
            job.say("the earlier reply, slowly", chunk_size=4, chunk_delay=0.25)
        )
        await probe.wait_for(f"{base}/porch/message", lambda m: bool(m.payload)
                             and m.json()["type"] == "agent_transcript", timeout=15)  # fmt: skip
        question = asyncio.create_task(ask(port, "the question"))
        assert (await asyncio.wait_for(job.chat.get(), 15)).text == "the question"
        await earlier  # its final arrives while the question waits
        assert not question.done()
        await job.say("the answer to the question")
        answer = await question
        assert Handled.from_event(answer).text == "the answer to the question"
    finally:
        probe.close()


@pytest.mark.conversation  # also run with the CPU loaded (make test)
async def test_assist_with_an_agent_on_the_real_agents_framework(
    tmp_path: Path, livekit_server: LiveKitServer, mqtt_broker: Mosquitto,
    framework_agent: Any, daemon_factory: Callable[[Path], DaemonProcess], base: str,
) -> None:  # fmt: skip
    """The same contract with a LiveKit Agents worker: its own answer, two at once, an answer
    cut short by another message (the framework interrupts and finalises it), no answer."""
    port = free_port()
    probe = MqttProbe("127.0.0.1", mqtt_broker.port, f"{base}/#")
    try:
        proc = start_daemon(tmp_path, mqtt_broker, livekit_server, daemon_factory, {
            "hall": (framework_agent.agent_name, port, {"agent_connect_timeout": 60},
                     {"answer_timeout": 30}),
        }, base)  # fmt: skip
        await wait_listening(port, proc)
        # The framework's job process can take long to start on a loaded machine: the
        # answer_timeout is about answers, so wait for the agent first.
        await probe.wait_for(f"{base}/hall/agent_state", lambda m: m.text == "listening",
                             timeout=90)  # fmt: skip

        answer = await ask(port, "what time is it", conversation_id="01HFW")
        assert Handled.from_event(answer).text == "You said: what time is it"

        answers = await asyncio.gather(ask(port, "one [instant]"), ask(port, "two [instant]"))
        assert [Handled.from_event(a).text for a in answers] == [
            "You said: one [instant]", "You said: two [instant]",
        ]  # fmt: skip

        mark = probe.mark()
        question = asyncio.create_task(ask(port, "a long story [slow 1]"))

        def answering(m: Any) -> bool:
            data = m.json() if m.payload else {}
            return data.get("type") == "agent_transcript" and not data.get("final") and str(
                data.get("text", "")).startswith("You said: a")

        await probe.wait_for(f"{base}/hall/message", answering, after=mark, timeout=20)
        probe.publish(f"{base}/hall/send", "never mind [instant]")
        cut = await question
        assert NotHandled.is_type(cut.type), cut
        assert cut.data["context"]["reason"] == "interrupted"

        silent = await ask(port, "say nothing [silent]", timeout=60)
        assert NotHandled.is_type(silent.type) and silent.data["context"]["reason"] == "timeout"

        answer = await ask(port, "still there? [instant]")
        assert Handled.from_event(answer).text == "You said: still there? [instant]"
    finally:
        probe.close()
