"""Queries of the User aggregate. Repositories flush but never commit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.scopes import Role
from app.core.text import canonical_identity
from app.models.user import User
from app.repositories.errors import unique_violation
from app.repositories.search import LIKE_ESCAPE, escape_like
from app.schemas.user import UserFilters

UNIQUE_COLUMNS = ("email_canonical", "username_canonical")


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """What issuing an access token needs of a user: its state and its claims."""

    id: int
    email: str
    role: str
    is_active: bool
    first_name: str
    last_name: str
    desired_name: str | None
    token_version: int


@dataclass(frozen=True, slots=True)
class LoginAccount(TokenHolder):
    """What login needs of a user: a token holder's fields and the password hash."""

    hashed_password: str


_USERS = cast("Table", User.__table__)
TOKEN_HOLDER_COLUMNS = tuple(_USERS.c[field.name] for field in fields(TokenHolder))
"""A token holder's columns, for queries that read one along with other rows."""
# Exactly the account's fields, so a field added there is read here too.
_LOGIN_COLUMNS = tuple(_USERS.c[field.name] for field in fields(LoginAccount))
# Login looks a user up on every attempt: built once, each statement's cache
# key is computed once too (a fresh select costs that on every call).
# Each is one lookup in a unique index (of the canonical columns).
_LOGIN_BY_EMAIL = select(*_LOGIN_COLUMNS).where(
    User.email_canonical == bindparam("login")
)
_LOGIN_BY_USERNAME = select(*_LOGIN_COLUMNS).where(
    User.username_canonical == bindparam("login")
)


async def find_login_account(
    connection: AsyncConnection, identifier: str
) -> LoginAccount | None:
    """The account whose email or username is `identifier`, in any spelling.

    Fullwidth, compatibility and case variants find the one account: the
    lookup is by canonical form (`canonical_identity`).

    Columns on a plain connection, not an entity in a session: login reads
    nine values and changes none of them (see `store_password_hash`).
    """
    value = canonical_identity(identifier)
    statement = _LOGIN_BY_EMAIL if "@" in value else _LOGIN_BY_USERNAME
    row = (await connection.execute(statement, {"login": value})).first()
    return None if row is None else LoginAccount(**row._mapping)


async def store_password_hash(
    connection: AsyncConnection, user_id: int, hashed_password: str
) -> None:
    """Replace a user's password hash (a legacy one upgraded at login)."""
    await connection.execute(
        update(User).where(User.id == user_id).values(hashed_password=hashed_password)
    )


_ACTIVE_ADMIN = (User.role == Role.ADMIN.value, User.is_active.is_(True))


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

    async def get_locked(self, user_id: int) -> User | None:
        """The user, locked against other writers until the transaction ends.

        A no-op UPDATE first: it takes the row lock on PostgreSQL and the
        write lock on SQLite (which has no row locks, and whose transactions
        take it only at their first write), so two concurrent changes of one
        user run one after the other and each reads what the other wrote: no
        lost update, no audit row with a stale "old" value.
        """
        await self.session.execute(
            update(_USERS)
            .where(_USERS.c.id == user_id)
            .values(updated_at=_USERS.c.updated_at)
        )
        return await self.session.get(User, user_id, populate_existing=True)

    async def lock_active_admins(self) -> None:
        """Lock every active administrator's row, in id order (PostgreSQL).

        Taken before any other user row by a change that may end an admin, so
        two such changes (two admins demoting each other) run one after the
        other and the second counts what the first left; id order keeps two of
        them from deadlocking. SQLite has no row locks and ignores `FOR UPDATE`:
        there the write lock of `get_locked`, taken next, serialises them.
        """
        await self.session.execute(
            select(User.id).where(*_ACTIVE_ADMIN).order_by(User.id).with_for_update()
        )

    async def count_active_admins(self) -> int:
        """How many active administrators there are (after `lock_active_admins`)."""
        statement = select(func.count()).select_from(User).where(*_ACTIVE_ADMIN)
        return int((await self.session.execute(statement)).scalar_one())

    async def delete(self, user: User) -> None:
        """Delete the row (sessions cascade)."""
        await self.session.delete(user)
        await self.session.flush()


def _filtered(statement: Select[Any], filters: UserFilters) -> Select[Any]:
    if filters.role is not None:
        statement = statement.where(User.role == filters.role)
    if filters.is_active is not None:
        statement = statement.where(User.is_active == filters.is_active)
    if filters.search:
        pattern = escape_like(filters.search) + "%"
        columns = (User.email, User.username, User.first_name, User.last_name)
        statement = statement.where(
            or_(
                *(
                    func.lower(column).like(pattern, escape=LIKE_ESCAPE)
                    for column in columns
                )
            )
        )
    return statement


async def list_users(
    session: AsyncSession, filters: UserFilters, *, limit: int, offset: int
) -> tuple[Sequence[User], int]:
    """One page of users (by id) and the total matching the filters."""
    page = (
        _filtered(select(User), filters).order_by(User.id).limit(limit).offset(offset)
    )
    total = _filtered(select(func.count()).select_from(User), filters)
    users = (await session.execute(page)).scalars().all()
    count = int((await session.execute(total)).scalar_one())
    return users, count
