"""Queries for login sessions and refresh tokens. Flush, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.models.auth_session import AuthSession, RefreshToken
from app.models.user import User

# Core INSERTs with parameters: a login writes two rows nobody reads back, so
# the unit of work (identity map, flush planning) would be pure overhead.
_INSERT_SESSION = insert(cast("Table", AuthSession.__table__))
_INSERT_TOKEN = insert(cast("Table", RefreshToken.__table__))


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

    async def find_token(
        self, token_hash: str
    ) -> tuple[RefreshToken, AuthSession] | None:
        """The refresh token with this hash and its family, or None."""
        statement = (
            select(RefreshToken, AuthSession)
            .join(AuthSession, AuthSession.id == RefreshToken.session_id)
            .where(RefreshToken.token_hash == token_hash)
        )
        row = (await self.session.execute(statement)).first()
        return None if row is None else (row[0], row[1])

    async def claim_rotation(self, token_id: int, now: datetime) -> bool:
        """Mark a token rotated, only if nobody did first (one winner per token)."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token_id, RefreshToken.rotated_at.is_(None))
            .values(rotated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0) == 1)

    async def add_token(self, session_id: str, token_hash: str) -> None:
        """Add the next refresh token of a family."""
        values = {"session_id": session_id, "token_hash": token_hash}
        await self.session.execute(_INSERT_TOKEN, values)

    async def touch(self, session_id: str, now: datetime) -> None:
        """Record that the family was just used."""
        await self.session.execute(
            update(AuthSession)
            .where(AuthSession.id == session_id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )

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

    async def list_active(self, user_id: int, now: datetime) -> Sequence[AuthSession]:
        """A user's families that are neither revoked nor past their lifetime."""
        statement = (
            select(AuthSession)
            .where(
                AuthSession.user_id == user_id,
                AuthSession.revoked_at.is_(None),
                AuthSession.expires_at > now,
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
