"""Account rules: signup and superuser creation. Services own the transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from app.core import events as event_types
from app.core.exceptions import (
    AppError,
    EmailAlreadyRegisteredError,
    UsernameTakenError,
)
from app.core.principal import Principal
from app.core.scopes import Role
from app.core.security import PasswordHasher
from app.models.user import User
from app.repositories.errors import UniqueViolationError
from app.repositories.users import UserRepository
from app.schemas.user import UserSignup
from app.services import audit, events

_CONFLICTS: dict[str, type[AppError]] = {
    "email_canonical": EmailAlreadyRegisteredError,
    "username_canonical": UsernameTakenError,
}


async def sign_up(
    session: AsyncSession, hasher: PasswordHasher, payload: UserSignup
) -> User:
    """Create a self-service account with the `user` role and commit it.

    The unique constraints decide duplicates, so two racing signups with one
    email end in exactly one account and one 409, never a 500.

    Args:
        session: The request's session.
        hasher: Password hasher.
        payload: Validated signup data.

    Returns:
        The stored user.

    Raises:
        EmailAlreadyRegisteredError: The email is taken.
        UsernameTakenError: The username is taken.
    """
    user = User(
        email=payload.email,
        username=payload.username,
        hashed_password=await hasher.hash(payload.password),
        first_name=payload.first_name,
        last_name=payload.last_name,
        desired_name=payload.desired_name,
        phone=payload.phone,
        age=payload.age,
        role=Role.USER.value,
    )
    return await insert_and_commit(session, user, self_registered=True)


async def create_superuser(
    session: AsyncSession,
    hasher: PasswordHasher,
    *,
    email: str,
    username: str,
    password: str,
) -> User:
    """Create an active, verified admin (used by the CLI).

    Raises:
        EmailAlreadyRegisteredError: The email is taken.
        UsernameTakenError: The username is taken.
    """
    user = User(
        email=email,
        username=username,
        hashed_password=await hasher.hash(password),
        first_name="Admin",
        last_name=username,
        role=Role.ADMIN.value,
        is_active=True,
        is_verified=True,
    )
    return await insert_and_commit(session, user)


async def insert_and_commit(
    session: AsyncSession,
    user: User,
    *,
    actor: Principal | None = None,
    self_registered: bool = False,
) -> User:
    """Insert `user` with its audit row and commit; a duplicate is a 409.

    Args:
        session: The request's session.
        user: The new account.
        actor: Who creates it (None: the CLI, or the user signing up).
        self_registered: The new user is their own actor (signup).
    """
    try:
        await UserRepository(session).add(user)
    except UniqueViolationError as exc:
        await session.rollback()
        raise _CONFLICTS[exc.column]() from exc
    await audit.record(
        session,
        actor=actor,
        actor_id=user.id if self_registered else None,
        actor_name=user.display_name if self_registered else (None if actor else "cli"),
        action="user.create",
        entity_type="user",
        entity_id=user.id,
        changes=audit.diff(None, audit.snapshot(user, audit.USER_AUDITED_FIELDS)),
    )
    await events.emit(
        session,
        event_types.USER_CREATED,
        "user",
        user.id,
        {"user_id": user.id, "email": user.email, "name": user.display_name},
    )
    await session.commit()
    return user
