"""Queries of the User aggregate. Repositories flush but never commit."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.user import User
from app.repositories.errors import unique_violation

UNIQUE_COLUMNS = ("email", "username")


class UserRepository:
    """Load and store users."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's session."""
        self.session = session

    async def add(self, user: User) -> User:
        """Insert `user` and flush, so the database assigns the id now.

        Raises:
            UniqueViolationError: Email or username already exists.
        """
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            violation = unique_violation(exc, "users", UNIQUE_COLUMNS)
            if violation is None:
                raise
            raise violation from exc
        return user

    async def get(self, user_id: int) -> User | None:
        """The user with this id, or None."""
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str) -> User | None:
        """The user with this (normalised) email, or None."""
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

    async def get_by_login(self, identifier: str) -> User | None:
        """The user whose email or username is `identifier` (case-insensitive)."""
        value = identifier.strip().lower()
        column = User.email if "@" in value else User.username
        result = await self.session.execute(select(User).where(column == value))
        return result.scalar_one_or_none()
