"""Run the demo: start the stack, wait for the session, print how to talk to it, show the talk."""

from __future__ import annotations

import asyncio
import io
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, cast

import structlog

from devstack.demo.stack import BrokerChoice, DemoError, DemoStack, StackSettings
from lkbridge.cli.clients import BridgeClient, Target, decode_json, load_target
from lkbridge.cli.console import LineReader, TranscriptPrinter, converse, first_done, listen

log = structlog.get_logger(__name__)

READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class DemoOptions:
    """What `lkbridge demo` was asked for."""

    headless: bool = False  # no input from the terminal; just show the conversation
    addr: str = "127.0.0.1"
    mqtt_port: int = 0
    base_topic: str = "lkbridge"
    broker: BrokerChoice = "auto"
    directory: Path | None = None  # kept afterwards; by default a temporary one is removed
    log_level: str | None = None  # None: the demo's own logs go to a file in the directory
    ready_timeout: float = READY_TIMEOUT


def command_name() -> str:
    """How the user invoked lkbridge, so the printed commands can be pasted as they are."""
    argv0 = sys.argv[0] if sys.argv else ""
    on_path = shutil.which("lkbridge")
    if on_path and argv0 and Path(on_path).resolve() == Path(argv0).resolve():
        return "lkbridge"
    if Path(argv0).name == "lkbridge":
        return shlex.quote(str(Path(argv0).absolute()))  # e.g. make demo's .venv/bin/lkbridge
    return f"{shlex.quote(sys.executable)} -m lkbridge" if not on_path else "lkbridge"


def instructions(stack: DemoStack, target: Target, interactive: bool) -> str:
    cmd, session = command_name(), stack.settings.session
    cfg = shlex.quote(str(stack.config_path))
    port, base = stack.mqtt_port, target.base_topic
    quit_how = ("Type here to talk to it too. Ctrl-D or Ctrl-C stops everything." if interactive
                else "Ctrl-C stops everything.")
    return "\n".join([
        "",
        f"Ready. Talk to the agent (session {session!r}) from another terminal:",
        f'  {cmd} send -c {cfg} {session} "hello"    # --wait: also print the answer',
        f"  {cmd} chat -c {cfg} {session}",
        f"  {cmd} status -c {cfg}",
        f"  mosquitto_sub -h 127.0.0.1 -p {port} -t '{base}/#' -v",
        f"  mosquitto_pub -h 127.0.0.1 -p {port} -t {base}/{session}/send -m 'what time is it'",
        f"  (or `export LKBRIDGE_CONFIG={cfg}` and leave out -c)",
        "Ask it the time, what 2 + 3 * 4 is, to count to 5 or reverse some words, or for help.",
        quit_how,
        f"ready: config={stack.config_path} mqtt=127.0.0.1:{port} base_topic={base} "
        f"session={session}",
        "",
    ])


async def wait_ready(client: BridgeClient, stack: DemoStack, timeout: float) -> None:
    """Until the session is connected and its agent is in the room."""
    topic = client.target.topic(stack.settings.session, "state")
    deadline = asyncio.get_running_loop().time() + timeout
    state: Any = None
    while asyncio.get_running_loop().time() < deadline:
        if failure := stack.daemon_failure():
            raise DemoError(failure)
        state = decode_json(client.latest.get(topic, b""))
        agent = state.get("agent") if isinstance(state, dict) else None
        if isinstance(state, dict) and state.get("is_connected") and isinstance(agent, dict) \
                and agent.get("is_connected"):
            return
        await asyncio.sleep(0.1)
    raise DemoError(f"the session did not connect within {timeout:.0f} s (last state: {state}); "
                    f"see {stack.daemon_log} and {stack.log_dir / 'livekit-server.log'}")


async def watch_daemon(stack: DemoStack) -> None:
    """Returns when the daemon exits."""
    while True:
        if stack.daemon_failure() is not None:
            return
        await asyncio.sleep(0.5)


async def _run(opts: DemoOptions, directory: Path, stop: asyncio.Event, out: TextIO,
               stdin: TextIO, err: TextIO) -> int:
    def progress(part: str, what: str) -> None:
        print(f"  {part:<15} {what}", file=out, flush=True)

    print("lkbridge demo: a complete local stack, on this machine only", file=out, flush=True)
    settings = StackSettings(directory, opts.addr, opts.mqtt_port, opts.base_topic, opts.broker)
    async with DemoStack(settings) as stack:
        try:
            if not await stack.start(progress, stop):
                return 0
            progress("config", str(stack.config_path))
            # Input is read from a terminal only: with stdin at /dev/null or a pipe, the demo
            # runs (headless) until it is stopped rather than ending at end of input.
            interactive = not opts.headless and stdin.isatty()
            async with BridgeClient(load_target(str(stack.config_path))) as client:
                printer = TranscriptPrinter(out, prompt=interactive)
                for topic_filter in listen(client, printer):
                    await client.subscribe(topic_filter)
                ready = await first_done(wait_ready(client, stack, opts.ready_timeout), stop.wait())
                if ready is None:
                    return 0
                ready.result()  # raises what went wrong
                print(instructions(stack, client.target, interactive), file=out, flush=True)
                log.info("demo_ready", config=str(stack.config_path), mqtt_port=stack.mqtt_port)
                if not interactive:
                    await first_done(stop.wait(), watch_daemon(stack))
                else:
                    talk = converse(client, settings.session, printer, LineReader(stdin), stop)
                    await first_done(talk, watch_daemon(stack))
                if failure := stack.daemon_failure():
                    raise DemoError(failure)
        except DemoError as exc:
            print(f"lkbridge demo: {exc}", file=err, flush=True)
            return 1
        finally:
            print("\nstopping: daemon, agent, LiveKit server, broker…", file=out, flush=True)
    print("stopped.", file=out, flush=True)
    return 0


def _configure_logs(opts: DemoOptions, directory: Path) -> None:
    from lkbridge.log import configure_logging

    if opts.log_level is not None:
        configure_logging(opts.log_level, "auto")
        return
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    stream = (directory / "logs" / "demo.log").open("a", encoding="utf-8")  # closed at exit
    configure_logging("info", "json", stream=stream)


def _close_log_file() -> None:
    """Stop logging into the directory that is about to be removed."""
    from lkbridge.log import configure_logging

    configure_logging("warning", "auto")


class PipeSafe(io.TextIOBase):
    """Output that may go away (`make demo | tee log` and Ctrl-C ends tee first): writes to a
    closed pipe are dropped, so that the demo still stops everything and cleans up."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
            except (BrokenPipeError, ValueError):
                self.broken = True
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                self.broken = True

    def isatty(self) -> bool:
        return not self.broken and self.stream.isatty()


async def run_demo(opts: DemoOptions, *, out: TextIO = sys.stdout, stdin: TextIO = sys.stdin) -> int:
    """`lkbridge demo`: 0 after a clean stop (Ctrl-C, SIGTERM, end of input), 1 on failure.

    A temporary directory is always removed, whatever happened; --dir keeps one.
    """
    out = cast(TextIO, PipeSafe(out))
    err = cast(TextIO, PipeSafe(sys.stderr))
    if opts.directory is not None:
        directory, temporary = opts.directory.resolve(), False
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    else:
        directory, temporary = Path(tempfile.mkdtemp(prefix="lkbridge-demo-")), True
    _configure_logs(opts, directory)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    code = 1
    try:
        code = await _run(opts, directory, stop, out, stdin, err)
        return code
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if temporary:
            if code != 0:
                print("lkbridge demo: the logs went with the temporary directory; "
                      "`--dir DIR` keeps them", file=err, flush=True)
            if opts.log_level is None:
                _close_log_file()
            shutil.rmtree(directory, ignore_errors=True)
        elif code != 0:
            print(f"lkbridge demo: logs are in {directory / 'logs'}", file=err, flush=True)
