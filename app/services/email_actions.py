"""Email verification and password reset: request (202) and confirm (single use)."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core import events as event_types
from app.core.exceptions import AppError
from app.core.principal import Principal
from app.core.ratelimit import EmailThrottle
from app.core.security import PasswordHasher
from app.core.tokens import hash_refresh_token
from app.models.base import utcnow
from app.models.user import User
from app.repositories import action_tokens
from app.repositories.sessions import SessionRepository
from app.repositories.users import UserRepository, find_login_account
from app.services import audit, auth_cache, events
from app.services.handlers import EMAIL_VERIFICATION, PASSWORD_RESET
from app.services.login_guard import LoginGuard
from app.services.users import PasswordLikeEmailError, ensure_password_avoids_email

logger = logging.getLogger("app.email")


class InvalidActionTokenError(AppError):
    """The emailed token is unknown, expired or already used."""

    status_code = 400
    code = "INVALID_OR_EXPIRED_TOKEN"
    message = "This link is invalid or has expired; request a new one"


async def request_verification(
    session: AsyncSession, throttle: EmailThrottle, principal: Principal
) -> None:
    """Queue a verification email for the caller.

    Nothing when already verified, or when the caller had their share of
    verification emails (`VERIFICATION_EMAIL_LIMIT`).
    """
    user = await UserRepository(session).get(principal.user_id)
    if user is None or user.is_verified:
        return
    if not await throttle.allows(EMAIL_VERIFICATION, user.id):
        return
    await events.emit_user_event(
        session, event_types.USER_VERIFICATION_REQUESTED, user.id
    )
    await session.commit()


async def _redeem(session: AsyncSession, token: str, purpose: str) -> User:
    now = utcnow()
    found = await action_tokens.find_usable(
        session, hash_refresh_token(token), purpose, now
    )
    if found is None or not await action_tokens.consume(session, found.id, now):
        await session.rollback()
        raise InvalidActionTokenError
    user = await UserRepository(session).get(found.user_id)
    if user is None or not user.is_active:
        await session.rollback()
        raise InvalidActionTokenError
    return user


async def _ensure_usable(session: AsyncSession, token: str, purpose: str) -> None:
    """Refuse a token that cannot be redeemed, before any work is spent on it.

    Only a read, whose transaction ends here: `_redeem` later consumes the
    token (single use under races) in the transaction that uses it.

    Raises:
        InvalidActionTokenError: Unknown, expired or used token.
    """
    found = await action_tokens.find_usable(
        session, hash_refresh_token(token), purpose, utcnow()
    )
    await session.commit()
    if found is None:
        raise InvalidActionTokenError


async def confirm_verification(session: AsyncSession, token: str) -> None:
    """Mark the token's account verified; the token cannot be used again.

    Raises:
        InvalidActionTokenError: Unknown, expired or used token.
    """
    user = await _redeem(session, token, EMAIL_VERIFICATION)
    if not user.is_verified:
        user.is_verified = True
        await audit.record(
            session,
            actor=None,
            actor_id=user.id,
            actor_name=user.display_name,
            action="user.verify_email",
            entity_type="user",
            entity_id=user.id,
            changes={"is_verified": {"old": False, "new": True}},
        )
    await session.commit()
    await auth_cache.forget(session, user_id=user.id)


async def request_password_reset(
    session: AsyncSession, throttle: EmailThrottle, email: str
) -> None:
    """Queue a reset email when an active account has this email.

    Not when the account had its share of reset emails already
    (`PASSWORD_RESET_EMAIL_LIMIT`). The caller always answers 202, whether or
    not the account exists or an email goes out, so the endpoint cannot be
    used to discover accounts.
    """
    user = await find_login_account(await session.connection(), email)
    if user is None or not user.is_active or "@" not in email:
        return
    if not await throttle.allows(PASSWORD_RESET, user.id):
        return
    await events.emit_user_event(
        session, event_types.USER_PASSWORD_RESET_REQUESTED, user.id
    )
    await session.commit()


async def request_password_reset_after_answer(
    sessionmaker: async_sessionmaker[AsyncSession], throttle: EmailThrottle, email: str
) -> None:
    """`request_password_reset` run after the 202 went out (a background task).

    A known account costs a write and a commit that an unknown one does not:
    done before answering, the response time told which emails have accounts.
    """
    try:
        async with sessionmaker() as session:
            await request_password_reset(session, throttle, email)
    except Exception:  # nobody is waiting for it: log, never raise into the server
        logger.exception("password reset request failed")


async def confirm_password_reset(
    session: AsyncSession,
    hasher: PasswordHasher,
    guard: LoginGuard,
    token: str,
    new_password: str,
) -> None:
    """Set a new password from a reset token and end every session.

    Raises:
        InvalidActionTokenError: Unknown, expired or used token.
    """
    await _ensure_usable(session, token, PASSWORD_RESET)
    # Hash before the write transaction, with no connection held: on SQLite
    # that transaction holds the engine's write lock, and a hash (longer while
    # logins queue for the hash threads) would stall every other writer.
    new_hash = await hasher.hash(new_password)
    user = await _redeem(session, token, PASSWORD_RESET)
    try:
        ensure_password_avoids_email(user.email, new_password)
    except PasswordLikeEmailError:
        await session.rollback()  # the token stays usable for a better password
        raise
    before = audit.snapshot(user, audit.USER_AUDITED_FIELDS)
    user.hashed_password = new_hash
    user.token_version += 1
    now = utcnow()
    revoked = await SessionRepository(session).revoke(
        now, "password_reset", user_id=user.id
    )
    await action_tokens.consume_all(session, user.id, PASSWORD_RESET, now)
    await audit.record(
        session,
        actor=None,
        actor_id=user.id,
        actor_name=user.display_name,
        action="user.password_reset",
        entity_type="user",
        entity_id=user.id,
        changes={
            **audit.diff(before, audit.snapshot(user, audit.USER_AUDITED_FIELDS)),
            "sessions_revoked": {"old": None, "new": len(revoked)},
        },
    )
    await events.emit_user_event(session, event_types.USER_PASSWORD_CHANGED, user.id)
    await session.commit()
    # Whoever holds the inbox now owns the account: lift any lockout (before
    # the cache wait, which a shutdown may cut short).
    await guard.reset(guard.account_key(user.id, user.email))
    await auth_cache.forget(session, user_id=user.id, session_ids=revoked)
