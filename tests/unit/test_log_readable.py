"""Logs people can read: words on a terminal, the native library folded in, warnings routed,
and nothing configured when lkbridge is used as a library."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from lkbridge import log
from lkbridge.log_console import PHRASES, describe_event


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    log._rooms.clear()


def configure(level: str = "info", fmt: str = "console") -> io.StringIO:
    stream = io.StringIO()
    log.configure_logging(level, fmt, stream=stream)
    return stream


def native(level: int, target: str, message: str) -> None:
    """A record as livekit.rtc forwards one from its native library."""
    logging.getLogger("livekit").log(level, "%s:%s:%s - %s", target, 63, target, message)


def test_session_events_read_as_sentences() -> None:
    stream = configure()
    logger = log.get_logger("lkbridge.session.core").bind(session="kitchen")
    logger.info("session_connection_state_changed", state="connecting", previous="disconnected")
    logger.info("session_agent_changed", lifecycle="connected", state="listening",
                identity="agent-1", failure=None)
    logger.warning("session_error_set", kind="connection", error="server unreachable")
    logger.info("transcript_merged", stream_id="s1")
    out = [line[9:] for line in stream.getvalue().splitlines()]  # after "HH:MM:SS "
    assert out == [
        "session kitchen: connecting to LiveKit",
        "session kitchen: agent agent-1 is listening",
        "WARNING session kitchen: error (connection): server unreachable",
        "session kitchen: transcript merged  stream_id=s1",
    ]


def test_a_value_from_a_peer_cannot_start_a_line_or_reach_the_terminal() -> None:
    stream = configure()
    logger = log.get_logger("lkbridge.session.core").bind(session="kitchen")
    forged = "bye\n12:00:00 session kitchen: agent admin joined\x1b]0;pwned\x07"
    logger.warning("session_error_set", kind="connection", error=forged)
    logger.info("transcript_merged", stream_id=forged)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert "\x1b" not in stream.getvalue() and "\x07" not in stream.getvalue()
    assert lines[0].endswith(r"error (connection): bye\x0a12:00:00 session kitchen: agent admin"
                             r" joined\x1b]0;pwned\x07")


@pytest.mark.parametrize("event", sorted(PHRASES))
def test_every_phrase_reads_with_or_without_its_fields(event: str) -> None:
    assert describe_event(event, {}, in_session=True)
    assert "_" not in describe_event(event, {}, in_session=True).split(":")[0]


def test_json_for_journald_keeps_event_names_and_fields() -> None:
    stream = configure(fmt="json")
    log.get_logger("lkbridge.x").bind(session="kitchen").info(
        "session_agent_changed", lifecycle="connected", state="listening")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert (line["event"], line["session"], line["lifecycle"], line["state"]) == (
        "session_agent_changed", "kitchen", "connected", "listening")


def test_native_info_chatter_is_debug_and_warnings_carry_the_session() -> None:
    stream = configure("info", "json")
    log.note_livekit_room("kitchen", True)
    native(logging.INFO, "livekit_signaling::signal_stream", "connecting to ws://x/rtc/v1")
    native(logging.WARNING, "livekit::rtc_engine", "failed to connect: refused, retrying (1/3)")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line == {
        "event": "failed to connect: refused, retrying (1/3)",
        "native": "livekit::rtc_engine",
        "session": "kitchen",
        "level": "warning",
        "logger": "livekit",
        "timestamp": line["timestamp"],
    }


def test_native_info_shows_at_debug_and_two_rooms_are_not_guessed() -> None:
    stream = configure("debug", "json")
    log.note_livekit_room("kitchen", True)
    log.note_livekit_room("porch", True)
    native(logging.INFO, "livekit_signaling::signal_stream", "connecting")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["level"] == "debug" and line["event"] == "connecting" and "session" not in line


def test_late_native_lines_still_belong_to_the_session_that_just_left() -> None:
    stream = configure("info", "json")
    log.note_livekit_room("kitchen", True)
    log.note_livekit_room("kitchen", False)  # the batch with its last error arrives after this
    native(logging.ERROR, "livekit_ffi::room", "error while connecting to a room")
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["session"] == "kitchen"


def test_python_warnings_become_log_lines() -> None:
    stream = configure("info", "console")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("The HMAC key is 6 bytes long", UserWarning, stacklevel=1)
    (line,) = stream.getvalue().splitlines()
    assert line[9:] == "WARNING py.warnings: UserWarning: The HMAC key is 6 bytes long"


LIBRARY_USE = """
import asyncio, logging
from lkbridge import Session, TokenSourceFixed
from lkbridge.log import get_logger
get_logger("lkbridge.demo").debug("debug_line")
get_logger("lkbridge.demo").info("info_line")
get_logger("lkbridge.demo").warning("warning_line", detail="x y")
print("done")
"""


def test_as_a_library_lkbridge_configures_no_output() -> None:
    out = subprocess.run([sys.executable, "-P", "-c", LIBRARY_USE], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout == "done\n"
    # the standard library's last-resort handler: warnings and errors only, on stderr
    assert out.stderr == "warning line  detail='x y'\n"


def test_a_library_users_own_logging_set_up_gets_the_events(caplog: Any) -> None:
    with caplog.at_level(logging.INFO, logger="lkbridge"):
        log.get_logger("lkbridge.x").bind(session="kitchen").info("session_ended")
    (record,) = caplog.records
    assert record.getMessage() == "session kitchen: ended"
