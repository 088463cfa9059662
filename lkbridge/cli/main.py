"""Command-line entry point: parses arguments and calls into the other modules."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lkbridge import __version__
from lkbridge.config import DEFAULT_CONFIG
from lkbridge.config.where import CONFIG_ENV, find_config

LOG_LEVELS = ("debug", "info", "warning", "error")

DESCRIPTIONS = {
    "run": "Run the daemon: connect the configured sessions to LiveKit and bridge them to MQTT. "
           "Logs go to stderr (JSON when not on a terminal, e.g. under systemd).",
    "reload": "Ask a running daemon (by process id) to re-read its config, and wait for its "
              "verdict: exit 0 when applied, 1 when it refused the config (for ExecReload).",
    "check": "Validate a config file against the schema and the installed plugins, and read the "
             "overrides file in its state directory. Exit 0 with a summary, or 2 listing every "
             "problem at once.",
    "init": "Write a starter config (never overwriting a file), creating its directory; or print "
            "the example config with every key, or the systemd unit.",
    "plugins": "List the plugins found (entry point group 'lkbridge') and what each registers.",
    "demo": "A complete local stack on this machine only: a LiveKit server, an MQTT broker, a "
            "demo agent and the daemon. Runs from a source checkout (make demo).",
    "send": "Send text to a session through the running daemon, over MQTT (session/send). "
            "Exit 1 with the reason if it is refused.",
    "status": "Show the daemon and its sessions, as retained on the MQTT broker.",
    "chat": "An interactive chat with a session through the running daemon; answers stream in.",
}


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """--log-level and -c, accepted before and after the subcommand."""
    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default,
                        help="debug, info, warning or error (default: the config's [log] level)")
    parser.add_argument("-c", "--config", metavar="FILE", default=default,
                        help=f"config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lkbridge", description="Host LiveKit agent sessions and bridge them to MQTT.",
        epilog=f"The config file is -c FILE, else ${CONFIG_ENV}, else {DEFAULT_CONFIG}. "
               "`lkbridge COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"lkbridge {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=DESCRIPTIONS[name],
                              parents=[common])

    command("run", "run the daemon")
    command("check", "validate a config file; exit 2 listing every problem")
    init = command("init", "write a starter config (never overwrites)")
    init.add_argument("file", nargs="?",
                      help=f"where to write it (default: -c, ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
    shown = init.add_mutually_exclusive_group()
    shown.add_argument("--print-unit", action="store_true",
                       help="print the systemd unit (lkbridge.service) instead")
    shown.add_argument("--print-example", action="store_true",
                       help="print the example config with every key instead")

    reload = command("reload", "make a running daemon re-read its config; fails if it refuses "
                              "the config")
    reload.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID)")
    reload.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")

    plugins = command("plugins", "list the plugins found and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")

    demo = command("demo", "a complete local stack: LiveKit server, broker, agent, daemon")
    demo.add_argument("--headless", action="store_true", help="no terminal input (for tests, CI)")
    demo.add_argument("--port", type=int, default=0, help="MQTT broker port (default: a free one)")
    demo.add_argument("--base-topic", default="lkbridge", help="MQTT base topic (lkbridge)")
    demo.add_argument("--addr", default="127.0.0.1", help="LiveKit server address (127.0.0.1)")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                      help="auto: Mosquitto when installed, else the embedded broker")
    demo.add_argument("--dir", help="keep config, state and logs here (default: a temporary dir)")

    send = command("send", "send text to a session through the running daemon")
    send.add_argument("session", help="the session id, e.g. kitchen")
    send.add_argument("text", help="what to send")
    send.add_argument("--id", help="idempotency key: a repeated id is not sent twice")
    send.add_argument("--wait", action="store_true", help="print the agent's final answer to this message; exit 3 interrupted, 4 unanswered, 5 ended")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits (30)")
    status = command("status", "the daemon and its sessions, from MQTT")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    chat = command("chat", "an interactive chat with a session through the daemon")
    chat.add_argument("session", help="the session id, e.g. kitchen")
    for client in (send, status, chat):
        client.add_argument("--host", help="MQTT broker host (overrides the config)")
        client.add_argument("--port", type=int, help="MQTT broker port (overrides the config)")
        client.add_argument("--base-topic", help="MQTT base topic (overrides the config)")
    return parser


def config_path(args: argparse.Namespace) -> str:
    """-c FILE, else $LKBRIDGE_CONFIG, else /etc/lkbridge/config.toml."""
    return find_config(args.config).path


def _config_named(args: argparse.Namespace) -> bool:
    return find_config(args.config).named


def _is_missing(path: str) -> bool:
    """True when the file is not there (not: when it may not be read, which load_config says)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _missing_config(command: str, path: str) -> int:
    print(f"lkbridge {command}: {path} does not exist. Write a starter config with:\n"
          f"  lkbridge init {path}\n"
          f"then edit it and check it with: lkbridge check -c {path}", file=sys.stderr)
    return 2


def cmd_plugins(args: argparse.Namespace) -> int:
    from lkbridge.plugins.host import load_plugins, render_plugins

    disable: list[str] = []
    path = config_path(args)
    if _config_named(args) or os.path.exists(path):
        from lkbridge.config.files import load_config
        from lkbridge.config.models import ConfigError

        try:
            disable = list(load_config(path).plugins.disable)
        except ConfigError as exc:
            print(f"lkbridge plugins: {path}: invalid configuration:\n{exc}", file=sys.stderr)
            return 2
    host = load_plugins(disable)
    if args.json:
        print(json.dumps({"plugins": host.describe(), "conflicts": host.conflicts}, indent=2))
    else:
        print(render_plugins(host))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from lkbridge.config.files import load_config
    from lkbridge.config.models import ConfigError
    from lkbridge.daemon import systemd
    from lkbridge.daemon.core import Daemon
    from lkbridge.log import configure_logging

    path = config_path(args)
    if _is_missing(path):
        systemd.status(f"no config file at {path}")
        return _missing_config("run", path)
    try:
        config = load_config(path)
    except ConfigError as exc:
        # Exit 2: the unit's RestartPreventExitStatus=2 stops the restart loop, an operator must act.
        hint = ""
        if "Permission denied" in str(exc):
            hint = (
                "\nlkbridge runs as a dynamic user: the config directory must be 0755 and the file"
                " 0644 (secrets belong in LoadCredential=); see docs/deployment.md, Upgrades"
            )
        print(f"lkbridge run: {path}: invalid configuration:\n{exc}{hint}\n"
              f"(`lkbridge check -c {path}` lists every problem)", file=sys.stderr)
        systemd.status(f"invalid configuration: {exc}"[:400])
        return 2
    configure_logging(args.log_level or config.log.level, config.log.format)

    async def main() -> int:
        daemon = Daemon(path)
        return await daemon.run()

    code = asyncio.run(main())
    # Everything is persisted and MQTT is closed by now. The LiveKit native library can keep
    # its threads waiting on a room whose connect was abandoned mid-way; exit without waiting.
    logging.shutdown()
    with contextlib.suppress(OSError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def cmd_reload(args: argparse.Namespace) -> int:
    from lkbridge.daemon.systemd import request_reload

    ok, message = request_reload(args.pid, timeout=args.timeout)
    print(f"lkbridge reload: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_check(args: argparse.Namespace) -> int:
    from lkbridge.cli.check import check_config_file

    path = config_path(args)
    if _is_missing(path):
        return _missing_config("check", path)
    ok, text = check_config_file(path)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 2


def cmd_init(args: argparse.Namespace) -> int:
    from lkbridge.config.files import write_starter_config
    from lkbridge.config.models import ConfigError
    from lkbridge.data import example_config, systemd_unit

    if args.print_unit:
        sys.stdout.write(systemd_unit())
        return 0
    if args.print_example:
        sys.stdout.write(example_config())
        return 0
    path = args.file or config_path(args)
    try:
        write_starter_config(path)
    except ConfigError as exc:
        print(f"lkbridge init: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}; edit it, then check it with: lkbridge check -c {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    try:  # the dev tools live in a source checkout, not in the runtime wheel
        from devstack.demo import DemoOptions, run_demo
    except ImportError:
        print("lkbridge demo runs from a source checkout: clone lkbridge and run `make demo` there",
              file=sys.stderr)
        return 2

    options = DemoOptions(
        headless=args.headless, addr=args.addr, mqtt_port=args.port, base_topic=args.base_topic,
        broker=args.broker, directory=Path(args.dir) if args.dir else None,
        log_level=args.log_level,
    )
    return asyncio.run(run_demo(options))


def _client_command(args: argparse.Namespace, run: Any) -> int:
    import asyncio

    from lkbridge.cli.clients import ClientError, load_target
    from lkbridge.log import configure_logging

    configure_logging(args.log_level or "error", "auto")
    where = find_config(args.config)
    if not where.named and not os.path.exists(where.path) and args.host is None:
        print(f"lkbridge {args.command}: no config file (none given with -c or ${CONFIG_ENV}, "
              f"and {where.path} does not exist): using the broker at 127.0.0.1:"
              f"{args.port or 1883}", file=sys.stderr)
    try:
        target = load_target(where.path if where.named else None, host=args.host,
                             port=args.port, base_topic=args.base_topic)
        return int(asyncio.run(run(target)))
    except ClientError as exc:
        print(f"lkbridge {args.command}: {exc}", file=sys.stderr)
        return 1


def cmd_send(args: argparse.Namespace) -> int:
    from lkbridge.cli.clients import send

    return _client_command(args, lambda target: send(
        target, args.session, args.text, send_id=args.id, wait=args.wait, timeout=args.timeout))


def cmd_status(args: argparse.Namespace) -> int:
    from lkbridge.cli.clients import status

    return _client_command(args, lambda target: status(target, as_json=args.json))


def cmd_chat(args: argparse.Namespace) -> int:
    from lkbridge.cli.console import chat

    return _client_command(args, lambda target: chat(target, args.session))


COMMANDS = {"run": cmd_run, "check": cmd_check, "reload": cmd_reload, "init": cmd_init,
            "plugins": cmd_plugins, "demo": cmd_demo, "send": cmd_send, "status": cmd_status, "chat": cmd_chat}


def main(argv: Sequence[str] | None = None) -> int:
    """The `lkbridge` command. A reader that goes away (`lkbridge status | head`) ends it quietly."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, so that a closed pipe is caught
        return code
    except BrokenPipeError:
        _drop_stdout()
        return 0
    except KeyboardInterrupt:
        return 130


def _drop_stdout() -> None:
    # Python would flush stdout once more at exit and report the broken pipe there.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from lkbridge.log import configure_logging

    # Logs go to stderr, so that command output on stdout stays machine-readable.
    configure_logging(args.log_level or "warning", "auto")
    return COMMANDS[args.command](args)
