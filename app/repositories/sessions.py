"""Queries for login sessions and refresh tokens. Flush, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.models.auth_session import AuthSession, RefreshToken
from app.models.user import User
from app.repositories.users import TOKEN_HOLDER_COLUMNS, TokenHolder

_SESSIONS = cast("Table", AuthSession.__table__)
_TOKENS = cast("Table", RefreshToken.__table__)
_USERS = cast("Table", User.__table__)

# Core statements with parameters, built once: a login writes two rows nobody
# reads back and a refresh changes two columns, so the unit of work (identity
# map, flush planning, ORM statement compilation) would be pure overhead.
_INSERT_SESSION = insert(_SESSIONS)
_INSERT_TOKEN = insert(_TOKENS)
_FIND_GRANT = (
    select(
        _TOKENS.c.id.label("token_id"),
        _TOKENS.c.rotated_at,
        _SESSIONS.c.id.label("session_id"),
        _SESSIONS.c.scope,
        _SESSIONS.c.revoked_at,
        _SESSIONS.c.expires_at,
        _SESSIONS.c.last_used_at,
        *TOKEN_HOLDER_COLUMNS,
    )
    .select_from(
        _TOKENS.join(_SESSIONS, _SESSIONS.c.id == _TOKENS.c.session_id).join(
            _USERS, _USERS.c.id == _SESSIONS.c.user_id
        )
    )
    .where(_TOKENS.c.token_hash == bindparam("token_hash"))
)
_CLAIM_ROTATION = (
    update(_TOKENS)
    .where(_TOKENS.c.id == bindparam("token_id"), _TOKENS.c.rotated_at.is_(None))
    .values(rotated_at=bindparam("now"))
)
_TOUCH = (
    update(_SESSIONS)
    .where(_SESSIONS.c.id == bindparam("family_id"))
    .values(last_used_at=bindparam("now"))
)


@dataclass(frozen=True, slots=True)
class RefreshGrant:
    """A presented refresh token's state, its family's and its user's."""

    token_id: int
    rotated_at: datetime | None
    session_id: str
    scope: str
    revoked_at: datetime | None
    expires_at: datetime
    last_used_at: datetime
    user: TokenHolder


_GRANT_FIELDS = tuple(
    field.name for field in fields(RefreshGrant) if field.name != "user"
)


async def open_family(
    connection: AsyncConnection, family: Mapping[str, Any], token_hash: str
) -> None:
    """Store a new family (its column values) with its first refresh token."""
    await connection.execute(_INSERT_SESSION, dict(family))
    token = {"session_id": family["id"], "token_hash": token_hash}
    await connection.execute(_INSERT_TOKEN, token)


class SessionRepository:
    """Load and change refresh-token families."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's database session."""
        self.session = session

    async def find_grant(self, token_hash: str) -> RefreshGrant | None:
        """The refresh token with this hash, with its family and user; or None.

        One statement, columns only: a refresh needs no entity of the three.
        """
        result = await self.session.execute(_FIND_GRANT, {"token_hash": token_hash})
        row = result.mappings().first()
        if row is None:
            return None
        holder = TokenHolder(
            **{column.name: row[column.name] for column in TOKEN_HOLDER_COLUMNS}
        )
        return RefreshGrant(**{name: row[name] for name in _GRANT_FIELDS}, user=holder)

    async def claim_rotation(self, token_id: int, now: datetime) -> bool:
        """Mark a token rotated, only if nobody did first (one winner per token)."""
        result = await self.session.execute(
            _CLAIM_ROTATION, {"token_id": token_id, "now": now}
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def add_token(self, session_id: str, token_hash: str) -> None:
        """Add the next refresh token of a family."""
        values = {"session_id": session_id, "token_hash": token_hash}
        await self.session.execute(_INSERT_TOKEN, values)

    async def touch(self, session_id: str, now: datetime) -> None:
        """Record that the family was just used."""
        await self.session.execute(_TOUCH, {"family_id": session_id, "now": now})

    async def revoke(
        self,
        now: datetime,
        reason: str,
        *,
        user_id: int,
        session_id: str | None = None,
        keep_session_id: str | None = None,
    ) -> list[str]:
        """Revoke a user's live families (one, or all but one). Returns their ids."""
        statement = (
            update(AuthSession)
            .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
            .returning(AuthSession.id)
            .execution_options(synchronize_session=False)
        )
        if session_id is not None:
            statement = statement.where(AuthSession.id == session_id)
        if keep_session_id is not None:
            statement = statement.where(AuthSession.id != keep_session_id)
        result = await self.session.execute(statement)
        return list(result.scalars().all())

    async def list_active(
        self, user_id: int, now: datetime, used_after: datetime
    ) -> Sequence[AuthSession]:
        """A user's families that are not revoked, expired, or idle since `used_after`."""
        statement = (
            select(AuthSession)
            .where(
                AuthSession.user_id == user_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
                AuthSession.last_used_at > used_after,
            )
            .order_by(AuthSession.last_used_at.desc())
        )
        return (await self.session.execute(statement)).scalars().all()


class AccessState:
    """What an access-token check needs to know about its user and session."""

    __slots__ = ("session_revoked", "user")

    def __init__(self, user: User, session_revoked: bool) -> None:
        """Hold the user row and whether the token's session is revoked."""
        self.user = user
        self.session_revoked = session_revoked


async def load_access_state(
    session: AsyncSession, user_id: int, session_id: str | None
) -> AccessState | None:
    """The user and their token's session state, in one query.

    Args:
        session: Database session.
        user_id: The token's subject.
        session_id: The token's `sid`, if any.

    Returns:
        None when the user does not exist.
    """
    statement = (
        select(User, AuthSession.revoked_at, AuthSession.id)
        .outerjoin(
            AuthSession,
            and_(AuthSession.id == session_id, AuthSession.user_id == User.id),
        )
        .where(User.id == user_id)
    )
    row = (await session.execute(statement)).first()
    if row is None:
        return None
    user, revoked_at, found_session = row
    revoked = session_id is not None and (
        found_session is None or revoked_at is not None
    )
    return AccessState(user, revoked)
