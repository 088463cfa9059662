"""Logging: JSON lines, console on a terminal, stdlib routing, session context, redaction."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from lkbridge import log
from lkbridge.config.secrets import Secret

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJraXRjaGVuIiwidmlkZW8iOnsicm9vbUpvaW4iOnRydWV9fQ"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)


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
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    log.clear_registered_secrets()


def configure(level: str = "debug", fmt: str = "json") -> io.StringIO:
    stream = io.StringIO()
    log.configure_logging(level, fmt, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_structlog_events_are_json_lines() -> None:
    stream = configure("info")
    logger = log.get_logger("lkbridge.test")
    logger.info("session_started", room="kitchen-1", attempt=2)
    logger.debug("too_detailed")
    logger.warning("broker_unreachable", host="127.0.0.1")
    first, second = lines(stream)
    assert first["event"] == "session_started"
    assert first["room"] == "kitchen-1" and first["attempt"] == 2
    assert first["level"] == "info" and first["logger"] == "lkbridge.test"
    assert first["timestamp"].endswith("Z")
    assert second["event"] == "broker_unreachable" and second["level"] == "warning"


def test_stdlib_loggers_go_through_the_same_formatter() -> None:
    stream = configure("info")
    logging.getLogger("livekit").warning("connection failed: %s (attempt %d)", "timeout", 3)
    logging.getLogger("paho.mqtt.client").info("Sending CONNECT")
    logging.getLogger("livekit.rtc").debug("below the level")
    livekit, paho = lines(stream)
    assert livekit == {
        "event": "connection failed: timeout (attempt 3)",
        "level": "warning",
        "logger": "livekit",
        "timestamp": livekit["timestamp"],
    }
    assert paho["logger"] == "paho.mqtt.client" and paho["event"] == "Sending CONNECT"


def test_auth_and_private_key_fields_are_redacted_like_the_config_treats_them() -> None:
    stream = configure()
    log.get_logger("t").info("e", auth="user:pw-7", private_key="pk-8", ssh_private_keys="pk-9")
    (line,) = lines(stream)
    assert line["auth"] == line["private_key"] == line["ssh_private_keys"] == "***"
    assert log.looks_secret("broker_auth") and not log.looks_secret("author")


def test_secret_keys_are_redacted_at_any_depth() -> None:
    stream = configure()
    log.get_logger("t").info(
        "token_fetched",
        password="pw-1",
        api_secret="sec-2",
        participant_token="tok-3",
        token="tok-4",
        access_token="tok-5",
        Authorization="Bearer abcdefghijkl",
        headers={"Authorization": "Basic dXNlcjpwdw==", "X-Trace": "keep-me"},
        nested=[{"client_secret": "sec-6"}, {"fine": "visible"}],
        token_source="minted",
        tokens_issued=3,
        secret_ref=None,
        password_set=None,
    )
    (line,) = lines(stream)
    for key in ("password", "api_secret", "participant_token", "token", "access_token"):
        assert line[key] == "***"
    assert line["Authorization"] == "***"
    assert line["headers"] == {"Authorization": "***", "X-Trace": "keep-me"}
    assert line["nested"] == [{"client_secret": "***"}, {"fine": "visible"}]
    assert line["token_source"] == "minted" and line["tokens_issued"] == 3
    text = stream.getvalue()
    for leaked in (
        "pw-1",
        "sec-2",
        "tok-3",
        "tok-4",
        "tok-5",
        "abcdefghijkl",
        "dXNlcjpwdw",
        "sec-6",
    ):
        assert leaked not in text


def test_jwts_and_bearer_tokens_are_scrubbed_from_text() -> None:
    stream = configure()
    logging.getLogger("livekit").info("connecting with token %s to %s", JWT, "wss://x")
    logging.getLogger("livekit").info(f"url=wss://x?access_token={JWT}&x=1")
    log.get_logger("t").info(
        "request_sent", detail=f"Authorization: Bearer {JWT}", note="bearer xyzzy-plugh-1"
    )
    first, second, third = lines(stream)
    assert first["event"] == "connecting with token *** to wss://x"
    assert second["event"] == "url=wss://x?access_token=***&x=1"
    assert third["detail"] == "Authorization: Bearer ***"
    assert third["note"] == "bearer ***"
    assert "eyJ" not in stream.getvalue()


def test_registered_secrets_are_scrubbed_everywhere() -> None:
    stream = configure()
    log.register_secret("correct-horse-battery")
    log.register_secret("abc")  # too short to scrub safely: ignored
    logging.getLogger("paho.mqtt.client").info("auth with correct-horse-battery failed")
    log.get_logger("t").info("odd_value", value=["x correct-horse-battery y"], abc="abc")
    first, second = lines(stream)
    assert first["event"] == "auth with *** failed"
    assert second["value"] == ["x *** y"] and second["abc"] == "abc"


def test_revealed_config_secrets_are_registered_automatically() -> None:
    stream = configure()
    value = Secret.env("LK_SECRET", "sessions.a.token.api_secret").reveal(
        {"LK_SECRET": "s3cr3t-v4lue"}
    )
    logging.getLogger("livekit").error("server rejected key devkey:%s", value)
    log.get_logger("t").info("secret_object", thing=Secret.inline("other-secret-value"))
    first, second = lines(stream)
    assert first["event"] == "server rejected key devkey:***"
    assert second["thing"] == "***"


def test_exceptions_are_formatted_and_scrubbed() -> None:
    stream = configure()
    log.register_secret("leaky-secret-value")
    try:
        raise RuntimeError(f"token {JWT} rejected for leaky-secret-value")
    except RuntimeError:
        logging.getLogger("livekit").exception("connect failed")
        log.get_logger("t").exception("session_failed")
    stdlib_line, structlog_line = lines(stream)
    for line in (stdlib_line, structlog_line):
        assert "RuntimeError: token *** rejected for ***" in line["exception"]
        assert "Traceback" in line["exception"]
    assert "leaky" not in stream.getvalue() and "eyJ" not in stream.getvalue()


def test_exception_values_are_rendered_as_text() -> None:
    stream = configure()
    log.get_logger("t").warning("send_failed", error=ValueError(f"bad {JWT}"), count=None)
    (line,) = lines(stream)
    assert line["error"] == "ValueError: bad ***" and line["count"] is None


def test_bind_session_adds_the_session_to_every_line() -> None:
    stream = configure()
    with log.bind_session("kitchen"):
        log.get_logger("t").info("inside")
        logging.getLogger("livekit").info("stdlib inside")
    log.get_logger("t").info("outside")
    inside, stdlib_inside, outside = lines(stream)
    assert inside["session"] == "kitchen" and stdlib_inside["session"] == "kitchen"
    assert "session" not in outside


async def test_tasks_keep_their_own_session() -> None:
    stream = configure()
    both_started = asyncio.Barrier(2)

    async def work(session_id: str) -> None:
        with log.bind_session(session_id):
            await both_started.wait()
            async with asyncio.TaskGroup() as group:  # a child task inherits the context
                group.create_task(asyncio.sleep(0))
                logging.getLogger("livekit").info("event in %s", session_id)

    async with asyncio.TaskGroup() as group:
        group.create_task(work("kitchen"), name="kitchen")
        group.create_task(work("hall"), name="hall")
    for line in lines(stream):
        assert line["event"] == f"event in {line['session']}"


def test_console_format_is_readable_and_redacted() -> None:
    stream = configure(fmt="console")
    log.get_logger("t").info("session_started", password="hunter2", room="r1", identity="me")
    text = stream.getvalue()
    assert "joined room r1 as me" in text
    assert "hunter2" not in text and "password=***" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_auto_format_is_json_off_a_terminal() -> None:
    stream = configure(fmt="auto")
    log.get_logger("t").info("hello")
    assert lines(stream)[0]["event"] == "hello"


def test_auto_format_is_console_on_a_real_terminal() -> None:
    primary, secondary = os.openpty()
    try:
        with open(secondary, "w", closefd=False) as terminal:
            log.configure_logging("info", "auto", stream=terminal)
            log.get_logger("t").info("hello_terminal", key="value")
            terminal.flush()
        output = os.read(primary, 65536).decode()
    finally:
        logging.getLogger().handlers[-1].close()
        os.close(primary)
        os.close(secondary)
    assert "hello terminal  key=value" in output
    assert not output.lstrip().startswith("{")


def test_reconfiguring_replaces_the_handler() -> None:
    first = configure("info")
    second = configure("warning")
    logging.getLogger("livekit").info("quiet now")
    logging.getLogger("livekit").warning("loud")
    assert first.getvalue() == ""
    assert [line["event"] for line in lines(second)] == ["loud"]


def test_defaults_to_stderr(capfd: pytest.CaptureFixture[str]) -> None:
    log.configure_logging()
    log.get_logger("t").info("to_stderr")
    captured = capfd.readouterr()
    assert "to_stderr" in captured.err and captured.out == ""


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_level_or_format(level: str, fmt: str) -> None:
    with pytest.raises(ValueError):
        log.configure_logging(level, fmt, stream=io.StringIO())


def test_redact_text_helper() -> None:
    assert log.redact_text(f"a {JWT} b") == "a *** b"
    assert log.redact_text("nothing secret here") == "nothing secret here"


def test_importing_lkbridge_modules_configures_nothing() -> None:
    code = (
        "import logging, structlog\n"
        "import lkbridge.log, lkbridge.config.files, lkbridge.daemon.store, lkbridge.daemon.systemd\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
        "assert not structlog.is_configured()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
