"""Unverified JWT helpers: read a participant token's claims, expiry and agent dispatch."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import jwt

from lkbridge.errors import InvalidTokenError

DEFAULT_TOLERANCE = 60.0
"""Seconds before `exp` at which a cached token no longer counts as valid (spec §6.5)."""


def decode_jwt_unverified(token: str) -> dict[str, Any]:
    """The payload claims of a JWT, read with PyJWT without verifying its signature (the server
    does); InvalidTokenError if it is not a JWT. Expiry is checked by the functions below."""
    parts = token.strip().split(".") if isinstance(token, str) else []
    if len(parts) != 3 or not parts[1]:
        raise InvalidTokenError("participant token is malformed: not a JWT (header.payload.sig)")
    try:
        claims: dict[str, Any] = jwt.decode(token.strip(), options={"verify_signature": False})
    except jwt.DecodeError as exc:
        # PyJWT's own words, which never quote the token ("Invalid payload padding", ...).
        raise InvalidTokenError(f"participant token is malformed: {exc}") from exc
    return claims


def token_dispatches_agent(token: str) -> bool:
    """True iff claim `roomConfig` (or `room_config`) has a non-empty `agents` list."""
    try:
        claims = decode_jwt_unverified(token)
    except InvalidTokenError:
        return False
    config = claims.get("roomConfig") or claims.get("room_config")
    return isinstance(config, dict) and bool(config.get("agents"))


def _numeric_claim(claims: Mapping[str, Any], key: str) -> float | None:
    value = claims.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def token_is_valid(
    token: str, *, tolerance: float = DEFAULT_TOLERANCE, now: float | None = None
) -> bool:
    """Cache validity (spec §6.5): decodable, nbf passed, exp present and later than now+tolerance."""
    try:
        claims = decode_jwt_unverified(token)
    except InvalidTokenError:
        return False
    now = time.time() if now is None else now
    nbf = _numeric_claim(claims, "nbf")
    exp = _numeric_claim(claims, "exp")
    if nbf is not None and now < nbf:
        return False
    return exp is not None and exp > now + tolerance


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def check_token_usable(token: str, *, skew: float = 60.0, now: float | None = None) -> None:
    """Raise InvalidTokenError saying why a token cannot be used to connect right now."""
    claims = decode_jwt_unverified(token)
    now = time.time() if now is None else now
    exp = _numeric_claim(claims, "exp")
    nbf = _numeric_claim(claims, "nbf")
    if exp is not None and exp <= now:
        raise InvalidTokenError(f"participant token expired at {_iso(exp)}")
    if nbf is not None and nbf > now + skew:
        raise InvalidTokenError(f"participant token is not valid before {_iso(nbf)}")
