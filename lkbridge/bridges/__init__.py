"""Daemon-wide integrations that observe sessions and command them."""
