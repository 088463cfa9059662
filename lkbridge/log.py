"""Structured logging: lkbridge's loggers, the daemon's output set-up, session context, redaction."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time as time_module
from collections.abc import Iterator, Mapping
from datetime import date, datetime, time
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from lkbridge.log_console import render_console

__all__ = [
    "LEVELS",
    "bind_session",
    "clear_registered_secrets",
    "configure_logging",
    "get_logger",
    "note_livekit_room",
    "redact_event",
    "redact_payload",
    "redact_text",
    "register_secret",
]

LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("auto", "json", "console")
REDACTED = "***"

# Keys whose values are secrets: never logged, and plugin options of these names are read as
# secrets by the config (password, api_secret, participant_token, Authorization, private_key…).
_SECRET_KEY = re.compile(
    r"(^|[_.-])(password|passwd|secret|token|api_?key|authorization|auth|credential|cookie"
    r"|private_?key)s?$",
    re.IGNORECASE,
)
# A JWT: three base64url parts, the header starting with eyJ ('{"' encoded).
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/-]{8,}=*")
# Shorter registered secrets would scrub ordinary words.
MIN_SECRET_LENGTH = 4
# In MQTT payloads (JSON that machines read) a short secret such as the LiveKit dev server's
# "secret" would break keys like "api_secret"; there only secrets of this length are scrubbed.
MIN_PAYLOAD_SECRET_LENGTH = 8

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None
_payload_pattern: re.Pattern[str] | None = None


def _alternatives(values: set[str], min_length: int) -> re.Pattern[str] | None:
    chosen = sorted((v for v in values if len(v) >= min_length), key=len, reverse=True)
    return re.compile("|".join(re.escape(v) for v in chosen)) if chosen else None


def register_secret(value: str) -> None:
    """Scrub this exact string from every log line from now on (short values are ignored)."""
    global _secrets_pattern, _payload_pattern
    if len(value) < MIN_SECRET_LENGTH:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _secrets_pattern = _alternatives(_secrets, MIN_SECRET_LENGTH)
        _payload_pattern = _alternatives(_secrets, MIN_PAYLOAD_SECRET_LENGTH)


def clear_registered_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _secrets_pattern, _payload_pattern
    with _secrets_lock:
        _secrets.clear()
        _secrets_pattern = _payload_pattern = None


def redact_text(text: str, *, payload: bool = False) -> str:
    """The text with registered secrets, JWTs and bearer credentials replaced by ***.

    payload: for MQTT payloads, where only secrets of MIN_PAYLOAD_SECRET_LENGTH count.
    """
    pattern = _payload_pattern if payload else _secrets_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _JWT.sub(REDACTED, text)
    return _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


def redact_payload(payload: bytes) -> bytes:
    """An MQTT payload with registered secrets, JWTs and bearer credentials replaced by ***.

    The one scrubbing point of everything the bridge publishes (as redact_event is for logs).
    Bytes that are not UTF-8 are returned unchanged (nothing lkbridge writes is binary).
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return payload
    cleaned = redact_text(text, payload=True)
    return payload if cleaned == text else cleaned.encode("utf-8")


def looks_secret(key: object) -> bool:
    """Whether a value under this key (a log field, a plugin option) is a secret."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def _redact(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if looks_secret(k) and v is not None else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact(v) for v in value]
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    return redact_text(repr(value))


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace secret-named keys and secret-looking values by ***."""
    for key, value in list(event_dict.items()):
        if key.startswith("_"):
            continue  # structlog's own metadata (the stdlib record), never rendered
        if looks_secret(key) and value is not None:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(value)
    return event_dict



class _Event(dict[str, Any]):
    """An event handed to stdlib logging: a dict for lkbridge's formatter, a line for any other.

    Without configure_logging (lkbridge used as a library), the application's logging set-up,
    or the standard library's defaults, decide what is shown, and show it as readable text.
    """

    def __str__(self) -> str:
        # The time and level are the handler's formatter's business.
        hidden = ("timestamp", "level")
        fields = {k: v for k, v in self.items() if not k.startswith("_") and k not in hidden}
        return render_console(None, "info", redact_event(None, "", fields))


def _to_stdlib(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> Any:
    """The last processor of lkbridge's loggers (as ProcessorFormatter.wrap_for_formatter)."""
    return (_Event(event_dict),), {"extra": {"_logger": logger, "_name": method_name}}


_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
_PIPELINE: list[Processor] = [
    structlog.stdlib.filter_by_level,
    *_SHARED,
    structlog.stdlib.PositionalArgumentsFormatter(),
    _to_stdlib,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """lkbridge's logger for a module: stdlib logging underneath, whatever structlog's set-up.

    It never prints by itself: below configure_logging() the stdlib defaults apply (warnings
    and errors on stderr, nothing else).
    """
    logger: structlog.stdlib.BoundLogger = structlog.wrap_logger(
        logging.getLogger(name),
        processors=_PIPELINE,
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    return logger


# -- the LiveKit native library and Python warnings ------------------------------------------

# Sessions with a LiveKit room (connecting, connected or reconnecting). The native library
# logs from its own threads, where no session is bound, and a little late (in batches): while
# one session has (or just had) a room, its lines are that session's; with several, they carry
# no session (they cannot be told apart).
_rooms_lock = threading.Lock()
_rooms: dict[str, float | None] = {}  # session id -> when its room went away (None: it has one)
NATIVE_GRACE = 2.0  # seconds a session still owns late native lines after its room went away


def note_livekit_room(session_id: str, active: bool) -> None:
    """Say whether session_id has a LiveKit room now (for the native library's log lines)."""
    with _rooms_lock:
        _rooms[session_id] = None if active else time_module.monotonic()
        if not active and len(_rooms) > 64:  # forget sessions long gone
            cutoff = time_module.monotonic() - NATIVE_GRACE
            for sid, gone in list(_rooms.items()):
                if gone is not None and gone < cutoff:
                    del _rooms[sid]


def _native_session() -> str | None:
    cutoff = time_module.monotonic() - NATIVE_GRACE
    with _rooms_lock:
        owners = [sid for sid, gone in _rooms.items() if gone is None or gone >= cutoff]
    return owners[0] if len(owners) == 1 else None


NATIVE_LOGGER = "livekit"
_WARNING_TEXT = re.compile(r"^.*?:\d+: (?P<category>\w+): (?P<message>.*?)(?:\n|$)", re.DOTALL)


def _is_native(record: logging.LogRecord) -> bool:
    # livekit.rtc forwards its native library's records as ("%s:%s:%s - %s", target, line,
    # module, message).
    return record.name == NATIVE_LOGGER and isinstance(record.args, tuple) and len(record.args) == 4


def fold_foreign(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """foreign_pre_chain processor: LiveKit native lines and Python warnings as lkbridge events."""
    record = event_dict.get("_record")
    args = event_dict.pop("positional_args", None)
    if not isinstance(record, logging.LogRecord):
        return event_dict
    if record.name == NATIVE_LOGGER and isinstance(args, tuple) and len(args) == 4:
        target, _line, _module, message = args
        event_dict["event"] = str(message)
        event_dict["native"] = str(target)
    elif record.name == "py.warnings":
        match = _WARNING_TEXT.match(str(event_dict.get("event", "")))
        if match:
            event_dict["event"] = "python_warning"
            event_dict["category"] = match["category"]
            event_dict["message"] = match["message"]
    if record.name.split(".")[0] == NATIVE_LOGGER and "session" not in event_dict:
        session = _native_session()
        if session is not None:
            event_dict["session"] = session
    return event_dict


class _QuietNative(logging.Filter):
    """The native library's INFO chatter counts as DEBUG: shown only at the debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and _is_native(record):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler configure_logging installs on the root logger (replaced on reconfigure)."""


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure_logging(
    level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    """Send lkbridge's events and stdlib logging (livekit, paho, warnings) to one formatter.

    `fmt` is "json", "console" or "auto" (console on a terminal, JSON otherwise, e.g. journald).
    Only the daemon and the command line call it; a library user's logging set-up is left
    alone. Calling it again replaces the previous configuration.
    """
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = sys.stderr if stream is None else stream
    if fmt == "auto":
        fmt = "console" if _is_tty(out) else "json"
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = render_console
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, fold_foreign],
        pass_foreign_args=True,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    # Plugins that log through structlog's own get_logger end up in the same place.
    structlog.configure(
        processors=[*_PIPELINE[:-1], structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = _Handler(out)
    handler.setFormatter(formatter)
    handler.addFilter(_QuietNative())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
    logging.captureWarnings(True)  # warnings.warn (e.g. PyJWT's) as log lines, not raw stderr


@contextlib.contextmanager
def bind_session(session_id: str) -> Iterator[None]:
    """Within the block (and tasks created in it) every log line carries `session=session_id`."""
    with structlog.contextvars.bound_contextvars(session=session_id):
        yield
