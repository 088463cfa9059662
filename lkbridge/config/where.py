"""Where the config file is: -c FILE, else $LKBRIDGE_CONFIG, else /etc/lkbridge/config.toml."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from lkbridge.config import DEFAULT_CONFIG

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "ConfigLocation", "find_config"]

CONFIG_ENV: Final = "LKBRIDGE_CONFIG"


@dataclass(frozen=True)
class ConfigLocation:
    path: str
    named: bool  # given with -c or $LKBRIDGE_CONFIG (so it must exist), not the default


def find_config(given: str | None, environ: Mapping[str, str] | None = None) -> ConfigLocation:
    """The config file every command uses."""
    env = os.environ if environ is None else environ
    if given:
        return ConfigLocation(given, True)
    if env.get(CONFIG_ENV):
        return ConfigLocation(env[CONFIG_ENV], True)
    return ConfigLocation(DEFAULT_CONFIG, False)
