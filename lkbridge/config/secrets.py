"""Secret values from the config: inline, or by reference to an env var, a file or a credential."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from lkbridge import log
from lkbridge.log import looks_secret

__all__ = [
    "REFERENCE_KINDS",
    "Secret",
    "SecretError",
    "SecretKind",
    "looks_secret",
    "parse_secret",
]

# systemd credential names: no path separators, nothing hidden.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,254}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretKind(StrEnum):
    """Where a secret's value comes from."""

    INLINE = "inline"
    ENV = "env"
    FILE = "file"
    CREDENTIAL = "credential"


REFERENCE_KINDS = (SecretKind.ENV, SecretKind.FILE, SecretKind.CREDENTIAL)


class SecretError(Exception):
    """A secret could not be resolved; names the TOML path and the reason."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class Secret:
    """A secret value or a reference to one; never shows its value in repr, str or pickles."""

    __slots__ = ("_kind", "_path", "_value")

    def __init__(self, kind: SecretKind, value: str, path: str = "") -> None:
        self._kind = SecretKind(kind)
        self._value = value
        self._path = path

    @classmethod
    def inline(cls, value: str, path: str = "") -> Secret:
        return cls(SecretKind.INLINE, value, path)

    @classmethod
    def env(cls, name: str, path: str = "") -> Secret:
        return cls(SecretKind.ENV, name, path)

    @classmethod
    def file(cls, file_path: str, path: str = "") -> Secret:
        return cls(SecretKind.FILE, file_path, path)

    @classmethod
    def credential(cls, name: str, path: str = "") -> Secret:
        return cls(SecretKind.CREDENTIAL, name, path)

    @property
    def kind(self) -> SecretKind:
        return self._kind

    @property
    def path(self) -> str:
        """The TOML path this secret was read from (for error messages)."""
        return self._path

    @property
    def is_inline(self) -> bool:
        return self._kind is SecretKind.INLINE

    def reference(self) -> dict[str, str] | None:
        """The reference table (`{"env": "NAME"}` …), or None for an inline secret."""
        return None if self.is_inline else {self._kind.value: self._value}

    def redacted(self) -> str | dict[str, str]:
        """What may be shown or published: the reference, or "***" for an inline value."""
        return self.reference() or "***"

    def reveal(self, environ: Mapping[str, str] | None = None) -> str:
        """Resolve the value now; raises SecretError naming the path when it is unavailable.

        The value is also registered with the log redactor, so it never appears in a log line.
        """
        env = os.environ if environ is None else environ
        if self._kind is SecretKind.INLINE:
            value = self._value
        elif self._kind is SecretKind.ENV:
            if self._value not in env:
                self._fail(f"environment variable {self._value} is not set")
            value = env[self._value]
        elif self._kind is SecretKind.FILE:
            value = self._read(Path(self._value), f"file {self._value}")
        else:
            directory = env.get("CREDENTIALS_DIRECTORY")
            if not directory:
                self._fail(
                    f"credential {self._value}: $CREDENTIALS_DIRECTORY is not set"
                    " (provide it with LoadCredential= in the systemd unit)"
                )
            value = self._read(Path(directory) / self._value, f"credential {self._value}")
        if not value:
            self._fail(f"{self._describe()} is empty")
        log.register_secret(value)
        return value

    def _describe(self) -> str:
        if self._kind is SecretKind.ENV:
            return f"environment variable {self._value}"
        if self._kind is SecretKind.INLINE:
            return "the value"
        return f"{self._kind.value} {self._value}"

    def _read(self, file_path: Path, what: str) -> str:
        try:
            text = file_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self._fail(f"{what} does not exist ({file_path})")
        except PermissionError:
            self._fail(f"{what} cannot be read: permission denied ({file_path})")
        except UnicodeDecodeError:
            self._fail(f"{what} is not UTF-8 text ({file_path})")
        except OSError as exc:
            self._fail(f"{what} cannot be read: {exc.strerror or exc} ({file_path})")
        # `echo secret > file` leaves a newline that is not part of the secret.
        return text.removesuffix("\n").removesuffix("\r")

    def _fail(self, message: str) -> NoReturn:
        raise SecretError(self._path, message)

    def __repr__(self) -> str:
        return "***"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return (self._kind, self._value) == (other._kind, other._value)

    def __hash__(self) -> int:
        return hash((Secret, self._kind, self._value))

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret cannot be pickled or serialised")


def parse_secret(value: object, path: str) -> Secret:
    """A Secret from a TOML value: a string, or a table with one of env, file, credential.

    Raises ValueError with a reason (without the path) when the value is not a valid secret.
    """
    if isinstance(value, str):
        if not value:
            raise ValueError("must not be empty")
        return Secret.inline(value, path)
    if not isinstance(value, Mapping):
        raise ValueError(_SHAPE)
    keys = set(value)
    kinds = [kind for kind in REFERENCE_KINDS if kind.value in keys]
    if len(kinds) != 1 or len(keys) != 1:
        raise ValueError(_SHAPE)
    kind = kinds[0]
    ref = value[kind.value]
    if not isinstance(ref, str) or not ref:
        raise ValueError(f"{kind.value}: must be a non-empty string")
    if kind is SecretKind.ENV and not _ENV_NAME.fullmatch(ref):
        raise ValueError(f"env: {ref!r} is not a valid environment variable name")
    if kind is SecretKind.FILE and not os.path.isabs(ref):
        raise ValueError(f"file: must be an absolute path, got {ref!r}")
    if kind is SecretKind.CREDENTIAL and not _CREDENTIAL_NAME.fullmatch(ref):
        raise ValueError(f"credential: {ref!r} is not a valid credential name")
    return Secret(kind, ref, path)


_SHAPE = (
    'must be a string or a table with exactly one of env, file or credential, e.g. { env = "NAME" }'
)
