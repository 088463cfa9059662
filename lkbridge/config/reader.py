"""Reading plain config tables: typed getters that record every problem at its TOML path."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from lkbridge.config.models import FrozenMap, Problem
from lkbridge.config.secrets import REFERENCE_KINDS, Secret, looks_secret, parse_secret
from lkbridge.mqtt.topic import base_topic_problem

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")  # plugin, transport, token source names
INLINE_REFUSED = (
    "an inline secret cannot be stored by lkbridge; give it as a reference:"
    ' { env = "NAME" }, { file = "/path" } or { credential = "NAME" }'
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
MISSING: Final = object()


def join_path(path: str, key: str) -> str:
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def type_name(value: object) -> str:
    if value is None:
        return "null"
    for kind, name in (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a float"),
        (str, "a string"),
        (Mapping, "a table"),
        (list, "an array"),
        (datetime, "a date-time"),
        (date, "a date"),
        (time, "a time"),
    ):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def url_problem(value: str, schemes: tuple[str, ...]) -> str | None:
    allowed = ", ".join(f"{s}://" for s in schemes[:-1]) + f" or {schemes[-1]}://"
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        return f"is not a valid URL (must be {allowed})"
    if parts.scheme.lower() not in schemes:
        return f"must be {allowed}"
    if not host:
        return "must include a host name"
    return None


_SESSION_PATH = re.compile(r'^(sessions|templates)\.("(?:[^"\\]|\\.)*"|[A-Za-z0-9_-]+)')


def table_kind(path: str) -> str:
    """The table's name as the docs write it: sessions.kitchen.token -> sessions.NAME.token."""
    return _SESSION_PATH.sub(r"\1.NAME", path)


class KeyHomes:
    """Which tables each key belongs to, to say where a misplaced key should go."""

    def __init__(self) -> None:
        self.tables: dict[str, set[str]] = {}  # key -> table kinds

    def learn(self, path: str, keys: Collection[str]) -> None:
        for key in keys:
            self.tables.setdefault(key, set()).add(table_kind(path))

    def hint(self, key: str, path: str) -> str:
        """'; did you mean [log] level?' for a key that belongs in other tables, else ''."""
        here = table_kind(path)
        others = sorted(t for t in self.tables.get(key, ()) if t != here and t)
        if not others:
            return ""
        where = " or ".join(f"[{t}] {key}" for t in others[:3])
        return f"; did you mean {where}?"


class TableReader:
    """Reads one TOML table, recording every problem at its path and which keys were used."""

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        problems: list[Problem],
        *,
        homes: KeyHomes | None = None,
        learn: KeyHomes | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.seen: set[str] = set()
        self.homes = homes  # says where a misplaced key belongs
        self.learn = learn  # records the keys each table reads (to build KeyHomes)

    def at(self, key: str) -> str:
        return join_path(self.path, key)

    def report(self, key: str, message: str) -> None:
        self.problems.append(Problem(self.at(key), message))

    def take(self, key: str) -> Any:
        self.seen.add(key)
        return self.data.get(key, MISSING)

    def _typed(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        value = self.take(key)
        if value is not MISSING and not check(value):
            self.report(key, f"expected {expected}, got {type_name(value)}")
            return MISSING
        return value

    def opt_string(self, key: str, *, nonempty: bool = True) -> str | None:
        value = self._typed(key, lambda v: isinstance(v, str), "a string")
        if value is MISSING:
            return None
        if nonempty and not value:
            self.report(key, "must not be empty")
            return None
        return str(value)

    def string(self, key: str, default: str) -> str:
        value = self.opt_string(key)
        return default if value is None else value

    def required_string(self, key: str) -> str:
        if key not in self.data:
            self.take(key)
            self.report(key, "is required")
            return ""
        return self.string(key, "")

    def choice(self, key: str, default: str, choices: Collection[str]) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.report(key, f"must be one of {', '.join(choices)}, got {value!r}")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int | None = None) -> int:
        value = self._typed(key, is_int, "an integer")
        if value is MISSING:
            return default
        if value < low or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.report(key, f"must be {bounds}, got {value}")
            return default
        return int(value)

    def positive_number(self, key: str, default: float, maximum: float | None = None) -> float:
        value = self._typed(key, lambda v: is_int(v) or isinstance(v, float), "a number")
        if value is MISSING:
            return default
        if not math.isfinite(value) or value <= 0:
            self.report(key, f"must be a number greater than 0, got {value}")
            return default
        if maximum is not None and value > maximum:
            self.report(key, f"must be at most {maximum:g}, got {value:g}")
            return default
        return float(value)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        """A number in [low, high] (seconds, usually)."""
        value = self._typed(key, lambda v: is_int(v) or isinstance(v, float), "a number")
        if value is MISSING:
            return default
        if not math.isfinite(value) or value < low or value > high:
            self.report(key, f"must be a number between {low:g} and {high:g}, got {value}")
            return default
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self._typed(key, lambda v: isinstance(v, bool), "true or false")
        return default if value is MISSING else bool(value)

    def names(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._typed(key, lambda v: isinstance(v, list), "an array of names")
        if value is MISSING:
            return default
        names: list[str] = []
        for index, item in enumerate(value):
            where = f"{self.at(key)}[{index}]"
            if not isinstance(item, str) or not NAME.fullmatch(item):
                shown = repr(item) if isinstance(item, str) else type_name(item)
                self.problems.append(Problem(where, f"must be a name like chat, got {shown}"))
            elif item in names:
                self.problems.append(Problem(where, f"{item!r} is listed twice"))
            else:
                names.append(item)
        return tuple(names)

    def str_map(self, key: str) -> FrozenMap[str, str]:
        value = self._typed(key, lambda v: isinstance(v, Mapping), "a table of strings")
        if value is MISSING:
            return FrozenMap()
        for item_key, item in value.items():
            if not isinstance(item, str):
                self.problems.append(
                    Problem(
                        join_path(self.at(key), item_key),
                        f"expected a string, got {type_name(item)}",
                    )
                )
        return FrozenMap((k, v) for k, v in value.items() if isinstance(v, str))

    def secret(self, key: str, *, required: bool, inline_ok: bool) -> Secret | None:
        value = self.take(key)
        if value is MISSING:
            if required:
                self.report(key, "is required")
            return None
        return secret_at(value, self.at(key), self.problems, inline_ok)

    def url(self, key: str, schemes: tuple[str, ...], default: str | None = None) -> str:
        value = self.required_string(key) if default is None else self.string(key, default)
        if value:
            problem = url_problem(value, schemes)
            if problem:
                self.report(key, problem)
        return value

    def abs_path(self, key: str) -> Path | None:
        value = self.opt_string(key)
        if value is None:
            return None
        if not os.path.isabs(value):
            self.report(key, f"must be an absolute path, got {value!r}")
            return None
        return Path(value)

    def topic(self, key: str, default: str) -> str:
        value = self.string(key, default)
        problem = base_topic_problem(value)
        if problem:
            self.report(key, problem)
        return value

    def section(self, key: str) -> TableReader | None:
        value = self._typed(key, lambda v: isinstance(v, Mapping), "a table")
        if value is MISSING:
            return None
        return TableReader(value, self.at(key), self.problems, homes=self.homes, learn=self.learn)

    def finish(self) -> None:
        """Report every key that nothing asked for, saying where it may belong."""
        if self.learn is not None:
            self.learn.learn(self.path, self.seen)
        known = sorted(self.seen)
        for key in self.data:
            if key not in self.seen:
                close = get_close_matches(key, known, n=1)
                if close:
                    self.report(key, f"unknown key (did you mean {close[0]!r}?)")
                    continue
                table = f"in [{table_kind(self.path)}]" if self.path else "at the top level"
                elsewhere = self.homes.hint(key, self.path) if self.homes is not None else ""
                self.report(key, f"unknown key {table}{elsewhere}" if elsewhere
                            else "unknown key")


def secret_at(value: Any, path: str, problems: list[Problem], inline_ok: bool) -> Secret | None:
    try:
        secret = parse_secret(value, path)
    except ValueError as exc:
        problems.append(Problem(path, str(exc)))
        return None
    if secret.is_inline and not inline_ok:
        problems.append(Problem(path, INLINE_REFUSED))
        return None
    return secret


def _is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in REFERENCE_KINDS


def freeze(value: Any, path: str, problems: list[Problem], inline_ok: bool, secretish: bool) -> Any:
    """Free-form plugin options: tables frozen, secret-looking keys turned into Secrets."""
    if secretish and (isinstance(value, str) or _is_reference(value)):
        return secret_at(value, path, problems, inline_ok)
    if isinstance(value, Mapping):
        return FrozenMap(
            (k, freeze(v, join_path(path, k), problems, inline_ok, looks_secret(k)))
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return tuple(
            freeze(v, f"{path}[{i}]", problems, inline_ok, secretish) for i, v in enumerate(value)
        )
    if value is None:
        problems.append(Problem(path, "must not be null"))
    return value
