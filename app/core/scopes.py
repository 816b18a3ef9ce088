"""OAuth2 scopes and what each role grants."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Role(StrEnum):
    """Roles; each grants a set of OAuth2 scopes."""

    USER = "user"
    MODERATOR = "moderator"
    ADMIN = "admin"


ACCOUNT_READ = "account:read"
ACCOUNT_WRITE = "account:write"
USERS_READ = "users:read"
USERS_WRITE = "users:write"
USERS_DELETE = "users:delete"
ITEMS_READ = "items:read"
ITEMS_WRITE = "items:write"
ITEMS_DELETE = "items:delete"
ITEMS_MODERATE = "items:moderate"
ADMIN_ALL = "admin:all"

SCOPE_DESCRIPTIONS: dict[str, str] = {
    ACCOUNT_READ: "Read my own account and sessions",
    ACCOUNT_WRITE: (
        "Change my profile and password, end my sessions, request email verification"
    ),
    USERS_READ: "Read other users' accounts",
    USERS_WRITE: "Create users and change their role or status",
    USERS_DELETE: "Deactivate users",
    ITEMS_READ: "Read items",
    ITEMS_WRITE: "Create and update items",
    ITEMS_DELETE: "Delete items",
    ITEMS_MODERATE: "Read and update any user's items",
    ADMIN_ALL: "Full administrative access (audit log, hard deletes)",
}

# Every role manages its own account; a token asked for with fewer scopes
# (e.g. `items:read` for a reporting script) cannot touch the account at all.
_USER = frozenset({ACCOUNT_READ, ACCOUNT_WRITE, ITEMS_READ, ITEMS_WRITE, ITEMS_DELETE})
_MODERATOR = _USER | {USERS_READ, ITEMS_MODERATE}
_ADMIN = frozenset(SCOPE_DESCRIPTIONS)

ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.USER: _USER,
    Role.MODERATOR: _MODERATOR,
    Role.ADMIN: _ADMIN,
}


def grant_scopes(role: str, requested: Iterable[str] | None) -> frozenset[str]:
    """The scopes a token gets: what was asked for, within what the role allows.

    Args:
        role: The user's role.
        requested: Scopes the client asked for; None or empty means "all allowed".

    Returns:
        The granted scopes (possibly empty when nothing asked for is allowed).
    """
    allowed = ROLE_SCOPES.get(role, frozenset())
    wanted = frozenset(requested or ())
    if not wanted:
        return allowed
    return allowed & wanted


def parse_scope(value: str | None) -> list[str]:
    """Split an OAuth2 `scope` string (space-separated) into scopes."""
    return [part for part in (value or "").split() if part]


def format_scope(scopes: Iterable[str]) -> str:
    """Render scopes as the space-separated OAuth2 `scope` string, sorted."""
    return " ".join(sorted(scopes))
