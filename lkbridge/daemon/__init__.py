"""The daemon: hosts configured sessions, supervises them, keeps history, talks to systemd."""
