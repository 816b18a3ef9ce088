"""Stored `Idempotency-Key` answers."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.idempotency import IdempotencyKey


class DuplicateKeyError(Exception):
    """Another request stored this key first (a race)."""


class IdempotencyRepository:
    """Load, store and expire idempotency keys."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's session."""
        self.session = session

    async def get(self, user_id: int, scope: str, key: str) -> IdempotencyKey | None:
        """The stored key, or None."""
        statement = select(IdempotencyKey).where(
            IdempotencyKey.user_id == user_id,
            IdempotencyKey.scope == scope,
            IdempotencyKey.key == key,
        )
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def add(self, entry: IdempotencyKey) -> None:
        """Store a key; a concurrent request with the same key raises.

        Raises:
            DuplicateKeyError: The key was stored by a concurrent request.
        """
        self.session.add(entry)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise DuplicateKeyError from exc

    async def delete(self, entry: IdempotencyKey) -> None:
        """Forget an expired key."""
        await self.session.delete(entry)
        await self.session.flush()
