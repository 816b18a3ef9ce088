"""Account management: profile, password change, and the admin users API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import events as event_types
from app.core.cache import AuthCache
from app.core.exceptions import (
    AppError,
    ConflictError,
    ForbiddenError,
    InsufficientScopeError,
    NotFoundError,
)
from app.core.principal import Principal
from app.core.scopes import (
    ACCOUNT_READ,
    ACCOUNT_WRITE,
    ADMIN_ALL,
    USERS_DELETE,
    USERS_READ,
    USERS_WRITE,
    Role,
)
from app.core.security import PasswordHasher
from app.core.storage import FileStorage
from app.models.base import utcnow
from app.models.user import User
from app.repositories import action_tokens
from app.repositories.items import ItemRepository
from app.repositories.sessions import SessionRepository
from app.repositories.users import UserRepository, list_users
from app.schemas.user import (
    PRIVILEGED_FIELDS,
    PasswordChange,
    ProfileUpdate,
    UserCreateByAdmin,
    UserFilters,
    UserPublic,
    UserUpdate,
)
from app.services import audit, auth_cache, events
from app.services.accounts import insert_and_commit
from app.services.handlers import PASSWORD_RESET
from app.services.login_guard import LoginGuard


class InvalidCurrentPasswordError(AppError):
    """`current_password` is wrong."""

    status_code = 400
    code = "INVALID_CURRENT_PASSWORD"
    message = "The current password is incorrect"


class PasswordLikeEmailError(AppError):
    """The new password contains the account's email."""

    status_code = 422
    code = "VALIDATION_ERROR"
    message = "Invalid input"


def ensure_password_avoids_email(email: str, password: str) -> None:
    """Refuse a new password that contains the account's email.

    Raises:
        PasswordLikeEmailError: It does.
    """
    if email.casefold() in password.casefold():
        raise PasswordLikeEmailError(
            details=[
                {"field": "body.new_password", "message": "must not contain the email"}
            ]
        )


class LastAdminError(ConflictError):
    """The change would leave no active administrator."""

    code = "LAST_ADMIN"
    message = "The last active administrator cannot be demoted, deactivated or deleted"


def _may_end_an_admin(changes: dict[str, object]) -> bool:
    """Whether these changes, applied to an active admin, would end one."""
    role = changes.get("role", Role.ADMIN)
    return role != Role.ADMIN or changes.get("is_active") is False


async def _keep_an_admin(repository: UserRepository, user: User) -> None:
    """Refuse to end `user` as an admin if they are the last active one.

    The caller took `lock_active_admins` and then the user's row lock: the
    count cannot change before the commit.

    Raises:
        LastAdminError: `user` is the only active administrator.
    """
    if user.role != Role.ADMIN or not user.is_active:
        return
    if await repository.count_active_admins() <= 1:
        raise LastAdminError


class UserNotFoundError(NotFoundError):
    """No such user, or the caller may not know of them."""

    message = "User not found"


async def get_self(session: AsyncSession, principal: Principal) -> User:
    """The caller's own account."""
    user = await UserRepository(session).get(principal.user_id)
    if user is None:  # deleted between the token check and now
        raise UserNotFoundError
    return user


async def profile(
    cache: AuthCache,
    sessionmaker: async_sessionmaker[AsyncSession],
    principal: Principal,
) -> UserPublic:
    """The caller's account as the API shows it, from the access cache if it can.

    The cache entry is the same one the token check just used (and is deleted
    by every change to the account), so `/users/me` costs no query when warm.
    """
    entry = await auth_cache.access_entry(cache, sessionmaker, principal.user_id, None)
    if entry is None:  # deleted between the token check and now
        raise UserNotFoundError
    return UserPublic.model_validate(entry)


async def _visible_user(
    session: AsyncSession,
    principal: Principal,
    user_id: int,
    *,
    own_scope: str,
    lock: bool = False,
) -> User:
    """The user `user_id`, if the caller may see them; yourself needs `own_scope`.

    `/users/{id}` with one's own id is `/users/me` under another name: it needs
    the same account scope, or a narrow token could read or change the account
    through it.
    """
    if user_id == principal.user_id and not principal.has(own_scope):
        raise InsufficientScopeError(own_scope)
    repository = UserRepository(session)
    user = await (repository.get_locked if lock else repository.get)(user_id)
    if user is None or not (user.id == principal.user_id or principal.has(USERS_READ)):
        raise UserNotFoundError  # no existence leak to callers without users:read
    return user


async def get_user(session: AsyncSession, principal: Principal, user_id: int) -> User:
    """A user the caller may see: themselves (`account:read`), or anyone with `users:read`.

    Raises:
        InsufficientScopeError: Yourself, without `account:read`.
        UserNotFoundError: Unknown, or not visible to the caller.
    """
    return await _visible_user(session, principal, user_id, own_scope=ACCOUNT_READ)


def _apply(user: User, changes: dict[str, object]) -> dict[str, object]:
    changed = {}
    for field, value in changes.items():
        if getattr(user, field) != value:
            setattr(user, field, value)
            changed[field] = value
    return changed


async def _audit_user(
    session: AsyncSession,
    principal: Principal,
    action: str,
    user: User,
    before: dict[str, Any] | None,
    **extra: dict[str, Any],
) -> None:
    after = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    await audit.record(
        session,
        actor=principal,
        action=action,
        entity_type="user",
        entity_id=user.id,
        changes={**audit.diff(before, after), **extra},
    )


async def update_profile(
    session: AsyncSession, principal: Principal, payload: ProfileUpdate
) -> User:
    """Change the caller's own profile fields."""
    user = await get_self(session, principal)
    before = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    if _apply(user, payload.model_dump(exclude_unset=True)):
        await _audit_user(session, principal, "user.update", user, before)
        await session.commit()
        await auth_cache.forget(session, user_id=user.id)  # names are in the cache
    return user


async def update_user(
    session: AsyncSession, principal: Principal, user_id: int, payload: UserUpdate
) -> User:
    """Change a user: the owner for profile fields, an admin for role and status.

    Nobody changes their own role, active or verified flag.

    Raises:
        InsufficientScopeError: Yourself, without `account:write`.
        UserNotFoundError: Unknown or invisible user.
        ForbiddenError: The caller may see but not change this user or field.
    """
    changes = payload.model_dump(exclude_unset=True)
    guard_admins = principal.has(USERS_WRITE) and _may_end_an_admin(changes)
    if guard_admins:  # before the user's row: see `lock_active_admins`
        await UserRepository(session).lock_active_admins()
    user = await _visible_user(
        session, principal, user_id, own_scope=ACCOUNT_WRITE, lock=True
    )
    is_self = user.id == principal.user_id
    privileged = PRIVILEGED_FIELDS & changes.keys()
    if not is_self and not principal.has(USERS_WRITE):
        raise ForbiddenError("You may not change this user")
    if privileged and (is_self or not principal.has(USERS_WRITE)):
        raise ForbiddenError(
            "Only an administrator may change another user's "
            + ", ".join(sorted(privileged))
        )
    if guard_admins:
        await _keep_an_admin(UserRepository(session), user)
    before = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    changed = _apply(user, changes)
    if not changed:
        if privileged:
            # A repeated role or status change: the first one's deletion may
            # still be pending, and this answer must hold as much as its.
            await session.commit()  # ends the row lock (writes nothing)
            await auth_cache.forget(session, user_id=user.id)
        return user
    if {"role", "is_active"} & changed.keys():
        # Outstanding tokens carry the old role or belong to a disabled account.
        user.token_version += 1
    revoked: dict[str, dict[str, object]] = {}
    revoked_ids: list[str] = []
    if changed.get("is_active") is False:
        revoked_ids = await SessionRepository(session).revoke(
            utcnow(), "deactivated", user_id=user.id
        )
        revoked = {"sessions_revoked": {"old": None, "new": len(revoked_ids)}}
    action = "user.role_change" if "role" in changed else "user.update"
    await _audit_user(session, principal, action, user, before, **revoked)
    if "is_active" in changed:
        await _emit_status(session, user)
    await session.commit()
    await auth_cache.forget(session, user_id=user.id, session_ids=revoked_ids)
    return user


async def _emit_status(session: AsyncSession, user: User) -> None:
    kind = (
        event_types.USER_ACTIVATED if user.is_active else event_types.USER_DEACTIVATED
    )
    await events.emit_user_event(session, kind, user.id)


async def create_user(
    session: AsyncSession,
    hasher: PasswordHasher,
    payload: UserCreateByAdmin,
    principal: Principal | None = None,
) -> User:
    """An admin creates an account with a chosen role and status."""
    data = payload.model_dump(exclude={"password"})
    user = User(**data, hashed_password=await hasher.hash(payload.password))
    return await insert_and_commit(session, user, actor=principal)


async def delete_user(
    session: AsyncSession,
    principal: Principal,
    storage: FileStorage,
    user_id: int,
    *,
    hard: bool,
) -> None:
    """Deactivate a user and revoke their sessions, or delete the row (`admin:all`).

    A hard delete takes the user's items and their attachments with it, the
    stored files included.

    Raises:
        UserNotFoundError: Unknown user.
        ForbiddenError: Hard delete without `admin:all`.
        ConflictError: Deleting yourself.
        LastAdminError: The user is the last active administrator.
    """
    if hard and not principal.has(ADMIN_ALL):
        raise ForbiddenError("Hard delete needs the admin:all scope")
    repository = UserRepository(session)
    await repository.lock_active_admins()  # before the user's row: see there
    user = await repository.get_locked(user_id)
    if user is None or not principal.has(USERS_DELETE):
        raise UserNotFoundError
    if user.id == principal.user_id:
        raise ConflictError("You cannot delete your own account this way")
    await _keep_an_admin(repository, user)
    if not hard and not user.is_active:
        # Already deactivated: nothing to change, audit or announce; but the
        # first deactivation's deletion may be pending, and this 204 too must
        # hold from now on.
        await session.commit()  # ends the row lock (writes nothing)
        await auth_cache.forget(session, user_id=user.id)
        return
    before = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    # Revoked and forgotten (after the commit) in both cases: with a hard
    # delete their rows go with the user, and a cached "live" marker left
    # behind would let an old access token in as the next user given this id
    # (SQLite reuses the highest one).
    ended = await SessionRepository(session).revoke(
        utcnow(), "deleted", user_id=user.id
    )
    files: list[str] = []
    if hard:
        files = await ItemRepository(session).owner_attachment_keys(user.id)
        await repository.delete(user)
        await audit.record(
            session,
            actor=principal,
            action="user.delete",
            entity_type="user",
            entity_id=user_id,
            changes=audit.diff(before, None),
        )
    else:
        user.is_active = False
        user.token_version += 1
        await _audit_user(
            session,
            principal,
            "user.deactivate",
            user,
            before,
            sessions_revoked={"old": None, "new": len(ended)},
        )
        await _emit_status(session, user)
    await session.commit()
    # After the commit (a failed commit must not lose files) and before the
    # cache wait, which a shutdown may cut short.
    for key in files:
        await storage.delete(key)
    await auth_cache.forget(session, user_id=user_id, session_ids=ended)


async def search_users(
    session: AsyncSession, filters: UserFilters, *, limit: int, offset: int
) -> tuple[Sequence[User], int]:
    """A page of users matching `filters`, and the total."""
    return await list_users(session, filters, limit=limit, offset=offset)


async def change_password(
    session: AsyncSession,
    hasher: PasswordHasher,
    guard: LoginGuard,
    principal: Principal,
    payload: PasswordChange,
    client_ip: str | None,
) -> int:
    """Set a new password and revoke every other session of the caller.

    Returns:
        How many other sessions were revoked.

    Raises:
        InvalidCurrentPasswordError: `current_password` is wrong (counted as a
            failed login, so it cannot be used to guess the password).
    """
    user = await get_self(session, principal)
    # End the read before the two hashes, so the connection goes back to the
    # pool while they run (longer while logins queue for the hash threads).
    # Committing keeps `user` loaded (no expiry on commit).
    await session.commit()
    account = guard.account_key(user.id, user.email)
    async with guard.attempt(account, client_ip) as attempt:
        valid, _ = await hasher.verify_and_update(
            payload.current_password, user.hashed_password
        )
        if not valid:
            await guard.record_failure(attempt, "wrong_current_password")
            raise InvalidCurrentPasswordError
        await guard.record_success(attempt)
    ensure_password_avoids_email(user.email, payload.new_password)
    new_hash = await hasher.hash(payload.new_password)
    # Locked for the write, as an admin's change is: the two run one after the
    # other, the audit sees what the other wrote, events leave in commit order.
    locked = await UserRepository(session).get_locked(user.id)
    if locked is None:
        raise UserNotFoundError  # deleted while this request ran
    user = locked
    before = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    user.hashed_password = new_hash
    now = utcnow()
    # A reset link mailed before the change must not undo it (a stolen mailbox
    # would otherwise outlive the new password).
    await action_tokens.consume_all(session, user.id, PASSWORD_RESET, now)
    revoked = await SessionRepository(session).revoke(
        now,
        "password_changed",
        user_id=user.id,
        keep_session_id=principal.session_id,
    )
    await _audit_user(
        session,
        principal,
        "user.password_change",
        user,
        before,
        sessions_revoked={"old": None, "new": len(revoked)},
    )
    await events.emit_user_event(session, event_types.USER_PASSWORD_CHANGED, user.id)
    await session.commit()
    await auth_cache.forget(session, session_ids=revoked)
    return len(revoked)
