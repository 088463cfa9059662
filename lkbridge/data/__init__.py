"""Files shipped in the wheel for users: the example config and the systemd unit."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["example_config", "systemd_unit"]

# In a checkout these are links to the one copy of each (config.example.toml and
# systemd/lkbridge.service at the top); the sdist and the wheel carry the files themselves.


def _read(name: str) -> str:
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def example_config() -> str:
    """config.example.toml: every key, documented."""
    return _read("config.example.toml")


def systemd_unit() -> str:
    """lkbridge.service, the hardened systemd unit."""
    return _read("lkbridge.service")
