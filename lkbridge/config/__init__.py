"""Configuration: TOML in and out, the schema, frozen typed models and secret references."""

DEFAULT_CONFIG = "/etc/lkbridge/config.toml"
"""The config file used when none is named (kept here so reading it needs no TOML machinery)."""
