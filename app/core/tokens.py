"""Access tokens (JWT, RFC 9068 profile), opaque refresh tokens and CSRF values."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from app.core.config import Settings
from app.core.domain import MAX_ID
from app.core.scopes import format_scope, parse_scope

ACCESS_TOKEN_TYPE = "access"  # noqa: S105 - a claim value, not a secret
ACCESS_TOKEN_HEADER_TYP = "at+jwt"  # noqa: S105 - a header value
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti", "type"]
REFRESH_TOKEN_BYTES = 32  # 256 bits
# A user id exactly as `str(user_id)` writes it: ASCII digits, no leading zero
# (`str.isdigit` and `int` also take "٦", and any length).
_SUBJECT = re.compile(r"[1-9][0-9]{0,9}")
_SESSION_ID = re.compile(r"[0-9a-f]{32}")


class InvalidAccessTokenError(Exception):
    """The string is not an access token this service issued and still honours."""


@dataclass(frozen=True, slots=True)
class AccessTokenSubject:
    """What an access token says about its user (everything but timestamps)."""

    user_id: int
    email: str
    role: str
    scopes: frozenset[str]
    first_name: str
    last_name: str
    desired_name: str | None
    session_id: str | None
    token_version: int


@dataclass(frozen=True, slots=True)
class IssuedAccessToken:
    """A freshly signed access token and its lifetime in seconds."""

    token: str
    expires_in: int


def create_access_token(
    settings: Settings, subject: AccessTokenSubject
) -> IssuedAccessToken:
    """Sign an access token for `subject`.

    Args:
        settings: Key, algorithm, issuer, audience and lifetime.
        subject: The user, scopes and session the token speaks for.

    Returns:
        The token and its `expires_in`.
    """
    now = datetime.now(UTC)
    lifetime = timedelta(minutes=settings.ACCESS_TOKEN_EXPIRE_MINUTES)
    claims: dict[str, Any] = {
        "iss": settings.JWT_ISSUER,
        "aud": settings.JWT_AUDIENCE,
        "sub": str(subject.user_id),
        "email": subject.email,
        "role": subject.role,
        "scope": format_scope(subject.scopes),
        "first_name": subject.first_name,
        "last_name": subject.last_name,
        "desired_name": subject.desired_name,
        "sid": subject.session_id,
        "ver": subject.token_version,
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "jti": uuid.uuid4().hex,
        "type": ACCESS_TOKEN_TYPE,
    }
    token = jwt.encode(
        claims,
        settings.SECRET_KEY.get_secret_value(),
        algorithm=settings.JWT_ALGORITHM,
        headers={"typ": ACCESS_TOKEN_HEADER_TYP},
    )
    return IssuedAccessToken(token=token, expires_in=int(lifetime.total_seconds()))


def _decode(settings: Settings, token: str) -> tuple[AccessTokenSubject, float, float]:
    try:
        decoded = jwt.decode_complete(
            token,
            settings.SECRET_KEY.get_secret_value(),
            algorithms=[settings.JWT_ALGORITHM],
            audience=settings.JWT_AUDIENCE,
            issuer=settings.JWT_ISSUER,
            options={"require": REQUIRED_CLAIMS},
        )
    except jwt.PyJWTError as exc:
        raise InvalidAccessTokenError(str(exc)) from exc
    if decoded["header"].get("typ") != ACCESS_TOKEN_HEADER_TYP:
        raise InvalidAccessTokenError("not an access token")
    claims = decoded["payload"]
    return _subject_from_claims(claims), float(claims["nbf"]), float(claims["exp"])


class AccessTokenVerifier:
    """Verifies access tokens, remembering the ones it verified until they expire.

    A token's signature and claims never change, so re-verifying the same string
    on every request only burns CPU; what can change (the user's status, the
    session's revocation, the token version) is checked on every request
    elsewhere. Expiry and not-before are checked against the clock on each use.
    """

    def __init__(self, settings: Settings, max_entries: int = 10_000) -> None:
        """Verify with `settings`; remember at most `max_entries` tokens."""
        self.settings = settings
        self.max_entries = max_entries
        self._verified: OrderedDict[str, tuple[AccessTokenSubject, float, float]] = (
            OrderedDict()
        )

    def verify(self, token: str) -> AccessTokenSubject:
        """The subject of a valid token.

        Raises:
            InvalidAccessTokenError: Invalid, or expired / not yet valid now.
        """
        now = time.time()
        found = self._verified.get(token)
        if found is None:
            found = _decode(self.settings, token)
            self._remember(token, found)
        subject, not_before, expires = found
        if not not_before <= now < expires:
            self._verified.pop(token, None)
            raise InvalidAccessTokenError("token expired or not yet valid")
        return subject

    def _remember(
        self, token: str, entry: tuple[AccessTokenSubject, float, float]
    ) -> None:
        self._verified[token] = entry
        if len(self._verified) > self.max_entries:
            self._verified.popitem(last=False)


def _subject_from_claims(claims: dict[str, Any]) -> AccessTokenSubject:
    if claims.get("type") != ACCESS_TOKEN_TYPE:
        raise InvalidAccessTokenError("not an access token")
    return AccessTokenSubject(
        user_id=_user_id(claims["sub"]),
        email=_text(claims, "email"),
        role=_text(claims, "role"),
        scopes=frozenset(parse_scope(_optional_text(claims, "scope"))),
        first_name=_optional_text(claims, "first_name") or "",
        last_name=_optional_text(claims, "last_name") or "",
        desired_name=_optional_text(claims, "desired_name"),
        session_id=_session_id(claims.get("sid")),
        token_version=_token_version(claims.get("ver", -1)),
    )


# Claims are checked by type, not coerced: a token with a list for `scope` or
# a NUL in `sid` is not one this service signed, and must not reach a query.
def _text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str):
        raise InvalidAccessTokenError(f"malformed {name} claim")
    return value


def _optional_text(claims: dict[str, Any], name: str) -> str | None:
    return None if claims.get(name) is None else _text(claims, name)


def _session_id(value: object) -> str | None:
    """A session id as the service makes them (uuid4 hex), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise InvalidAccessTokenError("malformed sid claim")
    return value


def _token_version(value: object) -> int:
    if type(value) is not int or not -1 <= value <= MAX_ID:
        raise InvalidAccessTokenError("malformed ver claim")
    return value


def _user_id(subject: object) -> int:
    """The id a `sub` claim names, if it is one an id column can hold."""
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
        raise InvalidAccessTokenError("malformed subject")
    user_id = int(subject)
    if user_id > MAX_ID:
        raise InvalidAccessTokenError("malformed subject")
    return user_id


def new_refresh_token() -> str:
    """A new opaque refresh token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def successor_refresh_token(settings: Settings, token: str) -> str:
    """The refresh token that replaces `token` when it is rotated.

    Derived (HMAC under the secret key), not drawn: a rotated token sent
    again within the grace window gets the very successor the first request
    got, without the database holding it (it keeps hashes only). It is as
    unpredictable as a random token to anyone without the secret key, which
    signs access tokens anyway.
    """
    key = settings.SECRET_KEY.get_secret_value().encode()
    mac = hmac.new(key, b"refresh-successor:" + token.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


def hash_refresh_token(token: str) -> str:
    """The stored form of a refresh token (SHA-256: the token has full entropy)."""
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(settings: Settings, refresh_token: str) -> str:
    """The CSRF value bound to a refresh-token cookie (signed double submit).

    Deriving it with an HMAC means a forged cookie/header pair is useless
    without the httpOnly refresh token itself.
    """
    key = settings.SECRET_KEY.get_secret_value().encode()
    return hmac.new(key, b"csrf:" + refresh_token.encode(), hashlib.sha256).hexdigest()


def same_secret(left: str, right: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(left.encode(), right.encode())
