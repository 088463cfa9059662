"""Command-line entry point: parses arguments and calls into the other modules."""

from __future__ import annotations

import argparse
import json
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


COMMANDS = {"plugins": cmd_plugins}


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
