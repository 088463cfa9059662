"""A live conversation in the terminal: transcript rendering and `lkbridge chat`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections import Counter, deque
from typing import Any, TextIO

from lkbridge.cli.clients import BridgeClient, ClientError, Target, decode_json, printable
from lkbridge.mqtt.client import IncomingMessage

REPLY_GRACE = 30.0  # after end of input, seconds to wait for the answer still coming
LABELS = {"agent_transcript": "agent", "user_transcript": "user", "user_input": "you"}
COLORS = {"agent": "36", "user": "33", "you": "32", "·": "2"}


class TranscriptPrinter:
    """Prints message events as a conversation.

    On a terminal the agent's text streams as it grows (the line is extended, or rewritten when
    the text changes); otherwise each message is printed once, as a plain line, when final.
    """

    def __init__(self, out: TextIO, *, tty: bool | None = None, prompt: bool = False,
                 session_label: bool = False) -> None:
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.color = self.tty and not os.environ.get("NO_COLOR")
        self.show_prompt = prompt and self.tty
        self.session_label = session_label
        self._open: tuple[str, str] | None = None  # (message id, text shown) of a growing line
        self._prompted = False
        self._unfinished: tuple[str, str, str, str] | None = None  # (id, label, session, text)
        self._own = Counter[str]()  # texts we sent, whose loopback user_input is not shown
        self._last_state: tuple[Any, ...] | None = None
        self.reply_done = asyncio.Event()  # set while no text of ours awaits its answer
        self.reply_done.set()
        self._unknown = 0  # texts of ours being sent, whose message id the daemon has not said
        self._awaited: set[str] = set()  # message ids of ours awaiting their answer
        self._settled: deque[str] = deque(maxlen=256)  # ids answered before we knew them

    def _label(self, name: str, session: str = "") -> str:
        text = f"{session}/{name}" if self.session_label and session else name
        if self.color:
            text = f"\x1b[{COLORS.get(name, '1')}m{text}\x1b[0m"
        return f"{text}: "

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _clear_prompt(self) -> None:
        if self._prompted:
            self._write("\r\x1b[K")
            self._prompted = False

    def _close_line(self) -> None:
        if self._open is not None:
            self._write("\n")
            self._open = None

    def prompt(self) -> None:
        """Show the input prompt, unless an answer is awaited or being written."""
        if self.show_prompt and self._open is None and not self._prompted \
                and self.reply_done.is_set():
            self._write(self._label("you"))
            self._prompted = True

    def input_done(self) -> None:
        """The user pressed Enter after the prompt: the terminal moved to a new line."""
        self._prompted = False

    def expect_own(self, text: str) -> None:
        """We are sending text: its loopback event is not printed, and an answer is awaited."""
        self._own[text] += 1
        self._unknown += 1
        self.reply_done.clear()

    def sent(self, message_id: str | None) -> None:
        """The daemon sent our text as message_id (None: it was not sent): its answer is the
        agent transcript whose reply_to is that id, or an `unanswered` event for it."""
        self._unknown = max(self._unknown - 1, 0)
        if message_id is not None and message_id not in self._settled:
            self._awaited.add(message_id)
        self._check_done()

    def unanswered(self, event: dict[str, Any]) -> None:
        """The daemon's `unanswered` event: say so if it is about a text of ours."""
        message_id = str(event.get("id"))
        if message_id in self._awaited:
            self.note(f"no answer to your message: {printable(str(event.get('reason')))}")
        self._settle(message_id)

    def _settle(self, message_id: str) -> None:
        self._settled.append(message_id)
        self._awaited.discard(message_id)
        self._check_done()

    def _check_done(self) -> None:
        if not self._awaited and not self._unknown:
            self.reply_done.set()

    def note(self, text: str) -> None:
        text = printable(text)
        prompted = self._prompted
        self._clear_prompt()
        self._close_line()
        label = f"\x1b[2m· {text}\x1b[0m" if self.color else f"· {text}"
        self._write(label + "\n")
        if prompted:
            self.prompt()

    def message(self, event: dict[str, Any]) -> None:
        kind, msg_id = printable(str(event.get("type"))), str(event.get("id"))
        text, final = printable(str(event.get("text") or "")), bool(event.get("final"))
        label = LABELS.get(kind, kind)
        session = printable(str(event.get("session") or ""))
        if kind == "user_input":
            if self._own[text] > 0:
                self._own[text] -= 1
                return
            final = True
        if kind == "agent_transcript" and final:
            if "reply_to" in event:  # an answer to the message with that id (maybe not ours)
                self._settle(str(event.get("reply_to")))
            else:  # a daemon that does not tie answers to questions: any answer will do
                self._awaited.clear()
                self._unknown = 0
                self.reply_done.set()
        if not self.tty:
            self._plain(msg_id, label, session, text, final)
            return
        self._clear_prompt()
        if self._open is not None and self._open[0] != msg_id:
            self._close_line()
        if self._open is None:
            self._write(self._label(label, session) + text)
        else:
            shown = self._open[1]
            if text.startswith(shown):
                self._write(text[len(shown) :])
            else:  # replaced rather than extended: rewrite the line
                self._write("\r\x1b[K" + self._label(label, session) + text)
        self._open = (msg_id, text)
        if final:
            self._close_line()
            self.prompt()

    def _plain(self, msg_id: str, label: str, session: str, text: str, final: bool) -> None:
        """One line per message when final; an unfinished one when another replaces it."""
        unfinished = self._unfinished
        if unfinished is not None and unfinished[0] != msg_id:
            self._write(f"{self._label(unfinished[1], unfinished[2])}{unfinished[3]} …(cut off)\n")
        self._unfinished = None if final else (msg_id, label, session, text)
        if final:
            self._write(f"{self._label(label, session)}{text}\n")

    def state(self, snapshot: dict[str, Any]) -> None:
        """Note changes of the connection, the agent's presence and errors (not every state)."""
        raw_agent, raw_error = snapshot.get("agent"), snapshot.get("error")
        agent: dict[str, Any] = raw_agent if isinstance(raw_agent, dict) else {}
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        key = (snapshot.get("connection_state"), agent.get("lifecycle"), error.get("message"))
        if key == self._last_state:
            return
        self._last_state = key
        connection, lifecycle, problem = key
        words = f"session {connection}, agent {lifecycle or 'absent'}"
        self.note(f"{words}; error: {problem}" if problem else words)


class LineReader:
    """Lines from a blocking stream (a terminal, a pipe), read in a daemon thread."""

    def __init__(self, stream: TextIO) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def pump() -> None:
            try:
                for line in iter(stream.readline, ""):
                    loop.call_soon_threadsafe(self._queue.put_nowait, line)
            except (OSError, ValueError):
                pass
            with contextlib.suppress(RuntimeError):  # the loop may be gone at exit
                loop.call_soon_threadsafe(self._queue.put_nowait, None)

        threading.Thread(target=pump, name="stdin-lines", daemon=True).start()

    async def get(self) -> str | None:
        """The next line without its newline, or None at end of input."""
        line = await self._queue.get()
        return None if line is None else line.rstrip("\r\n")


def listen(client: BridgeClient, printer: TranscriptPrinter, session: str = "+") -> list[str]:
    """Route a session's message and state events to printer; the filters to subscribe to."""
    target = client.target

    def on_message(msg: IncomingMessage) -> None:
        event = decode_json(msg.payload)
        if isinstance(event, dict) and not msg.retain:
            printer.message(event)

    def on_event(msg: IncomingMessage) -> None:
        event = decode_json(msg.payload)
        if isinstance(event, dict) and event.get("event") == "unanswered" and not msg.retain:
            printer.unanswered(event)

    def on_state(msg: IncomingMessage) -> None:
        snapshot = decode_json(msg.payload)
        if isinstance(snapshot, dict) and msg.topic != target.topic("bridge", "state"):
            printer.state(snapshot)

    client.on(target.topic(session, "message"), on_message)
    client.on(target.topic(session, "state"), on_state)
    client.on(target.topic(session, "event"), on_event)
    return [target.topic(session, "state"), target.topic(session, "message"),
            target.topic(session, "event")]


async def first_done(*coros: Any, timeout: float | None = None) -> asyncio.Future[Any] | None:
    """Run the awaitables until one finishes (or the timeout); cancel the rest; return it."""
    futures = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in futures:
            future.cancel()
    return futures[0] if futures[0] in done else None


async def converse(client: BridgeClient, session: str, printer: TranscriptPrinter,
                   lines: LineReader, stop: asyncio.Event) -> None:
    """Send each input line to the session until end of input (then await the answer) or stop."""
    while not stop.is_set():
        printer.prompt()
        got = await first_done(lines.get(), stop.wait())
        if got is None:
            return
        line = got.result()
        printer.input_done()
        if line is None:
            break
        if not line.strip():
            continue
        printer.expect_own(line)
        answer = await client.request("session/send", {"session": session, "text": line})
        data = answer.get("data")
        sent_id = data.get("id") if isinstance(data, dict) else None
        if answer.get("status") != "ok" or not isinstance(sent_id, str):
            printer.sent(None)
            printer.note(f"not sent: {answer.get('error')}")
        else:
            printer.sent(sent_id)
    # End of input: let an answer that is still coming finish.
    await first_done(printer.reply_done.wait(), stop.wait(), timeout=REPLY_GRACE)


async def chat(target: Target, session: str, *, stdin: TextIO = sys.stdin,
               out: TextIO = sys.stdout) -> int:
    """`lkbridge chat`: an interactive conversation with a session through the daemon."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with BridgeClient(target) as client:
            printer = TranscriptPrinter(out, prompt=True)
            state_topic = target.topic(session, "state")
            await client.collect_retained(state_topic, target.topic("bridge", "info"),
                                          until=lambda: state_topic in client.latest)
            if state_topic not in client.latest:
                info = decode_json(client.latest.get(target.topic("bridge", "info"), b""))
                if client.bridge_state is None:
                    raise ClientError(client.daemon_problem())
                known = ", ".join(info.get("sessions", [])) if isinstance(info, dict) else ""
                raise ClientError(f"no session {session!r} on {target.where}"
                                  + (f" (sessions: {known})" if known else ""))
            how = "Ctrl-D or Ctrl-C quits" if printer.tty else "end of input quits"
            printer.note(f"chatting with {session} via {target.where}; {how}")
            filters = listen(client, printer, session)
            snapshot = decode_json(client.latest[state_topic])
            if isinstance(snapshot, dict):
                printer.state(snapshot)
            for topic_filter in filters:
                await client.subscribe(topic_filter)
            await converse(client, session, printer, LineReader(stdin), stop)
            printer.note("bye")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0
