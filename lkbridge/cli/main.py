"""Command-line entry point: parses arguments and calls into the other modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from lkbridge import __version__
from lkbridge.config import DEFAULT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lkbridge", description="Host LiveKit agent sessions and bridge them to MQTT."
    )
    parser.add_argument("--version", action="version", version=f"lkbridge {__version__}")
    parser.add_argument("--log-level", default=None, help="debug, info, warning or error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file ({DEFAULT_CONFIG})")

    check = sub.add_parser("check", help="validate a config file; exit 2 listing every problem")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file ({DEFAULT_CONFIG})")

    reload = sub.add_parser(
        "reload", help="make a running daemon re-read its config; fails if it refuses the config"
    )
    reload.add_argument("--pid", type=int, required=True, help="the daemon's process id ($MAINPID)")
    reload.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")

    init = sub.add_parser("init", help="write a starter config (never overwrites)")
    init.add_argument("file", help="where to write it")

    plugins = sub.add_parser("plugins", help="list the plugins found and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("-c", "--config", help="config file (for its [plugins] disable list)")

    demo = sub.add_parser("demo", help="a complete local stack: LiveKit server, broker, agent, daemon")
    demo.add_argument("--headless", action="store_true", help="no terminal input (for tests, CI)")
    demo.add_argument("--port", type=int, default=0, help="MQTT broker port (default: a free one)")
    demo.add_argument("--base-topic", default="lkbridge", help="MQTT base topic (lkbridge)")
    demo.add_argument("--addr", default="127.0.0.1", help="LiveKit server address (127.0.0.1)")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                      help="auto: Mosquitto when installed, else the embedded broker")
    demo.add_argument("--dir", help="keep config, state and logs here (default: a temporary dir)")

    send = sub.add_parser("send", help="send text to a session through the running daemon")
    send.add_argument("session")
    send.add_argument("text")
    send.add_argument("--id", help="idempotency key: a repeated id is not sent twice")
    send.add_argument("--wait", action="store_true", help="print the agent's final answer")
    send.add_argument("--timeout", type=float, default=30.0, help="seconds --wait waits (30)")
    status = sub.add_parser("status", help="the daemon and its sessions, from MQTT")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    chat = sub.add_parser("chat", help="an interactive chat with a session through the daemon")
    chat.add_argument("session")
    for client in (send, status, chat):
        client.add_argument("-c", "--config", help="its [mqtt] settings are used "
                            f"($LKBRIDGE_CONFIG, else {DEFAULT_CONFIG} if it exists)")
        client.add_argument("--host", help="MQTT broker host (overrides the config)")
        client.add_argument("--port", type=int, help="MQTT broker port (overrides the config)")
        client.add_argument("--base-topic", help="MQTT base topic (overrides the config)")
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from lkbridge.plugins.host import load_plugins, render_plugins

    disable: list[str] = []
    if args.config:
        from lkbridge.config.files import load_config

        disable = list(load_config(args.config).plugins.disable)
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

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # Exit 2: the unit's RestartPreventExitStatus=2 stops the restart loop, an operator must act.
        hint = ""
        if "Permission denied" in str(exc):
            hint = (
                "\nlkbridge runs as a dynamic user: the config directory must be 0755 and the file"
                " 0644 (secrets belong in LoadCredential=); see docs/deployment.md, Upgrades"
            )
        print(f"lkbridge: {args.config}: invalid configuration:\n{exc}{hint}", file=sys.stderr)
        systemd.status(f"invalid configuration: {exc}"[:400])
        return 2
    configure_logging(args.log_level or config.log.level, config.log.format)

    async def main() -> int:
        daemon = Daemon(args.config)
        return await daemon.run()

    code = asyncio.run(main())
    # Everything is persisted and MQTT is closed by now. The LiveKit native library can keep
    # its threads waiting on a room whose connect was abandoned mid-way; exit without waiting.
    logging.shutdown()
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

    ok, text = check_config_file(args.config)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 2


def cmd_init(args: argparse.Namespace) -> int:
    from lkbridge.config.files import write_starter_config
    from lkbridge.config.models import ConfigError

    try:
        write_starter_config(args.file)
    except ConfigError as exc:
        print(f"lkbridge init: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.file}; check it with: lkbridge check -c {args.file}")
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
    try:
        target = load_target(args.config, host=args.host, port=args.port,
                             base_topic=args.base_topic)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    from lkbridge.log import configure_logging

    # Logs go to stderr, so that command output on stdout stays machine-readable.
    configure_logging(args.log_level or "warning", "auto")
    return COMMANDS[args.command](args)
