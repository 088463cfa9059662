"""Command-line entry point: parses arguments and calls into the other modules."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence

from lkbridge import __version__

DEFAULT_CONFIG = "/etc/lkbridge/config.toml"


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

    init = sub.add_parser("init", help="write a starter config (never overwrites)")
    init.add_argument("file", help="where to write it")

    plugins = sub.add_parser("plugins", help="list the plugins found and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.add_argument("-c", "--config", help="config file (for its [plugins] disable list)")
    return parser


def cmd_plugins(args: argparse.Namespace) -> int:
    from lkbridge.plugins import load_plugins, render_plugins

    disable: list[str] = []
    if args.config:
        from lkbridge.config import load_config

        disable = list(load_config(args.config).plugins.disable)
    host = load_plugins(disable)
    if args.json:
        print(json.dumps({"plugins": host.describe(), "conflicts": host.conflicts}, indent=2))
    else:
        print(render_plugins(host))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import asyncio

    from lkbridge.config import load_config
    from lkbridge.config_models import ConfigError
    from lkbridge.daemon import Daemon
    from lkbridge.log import configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"lkbridge: {args.config}: invalid configuration:\n{exc}", file=sys.stderr)
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


def cmd_check(args: argparse.Namespace) -> int:
    from lkbridge.checks import check_config_file

    ok, text = check_config_file(args.config)
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 2


def cmd_init(args: argparse.Namespace) -> int:
    from lkbridge.config import write_starter_config
    from lkbridge.config_models import ConfigError

    try:
        write_starter_config(args.file)
    except ConfigError as exc:
        print(f"lkbridge init: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.file}; check it with: lkbridge check -c {args.file}")
    return 0


COMMANDS = {"run": cmd_run, "check": cmd_check, "init": cmd_init, "plugins": cmd_plugins}


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
