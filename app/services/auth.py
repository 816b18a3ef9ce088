"""Authentication: login, refresh-token rotation, logout, sessions, token checks."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.cache import AuthCache
from app.core.config import Settings
from app.core.exceptions import (
    AccountDisabledError,
    InvalidCredentialsError,
    InvalidRefreshTokenError,
    InvalidScopeError,
    InvalidTokenError,
    NotFoundError,
    TokenReusedError,
)
from app.core.principal import Principal
from app.core.scopes import ROLE_SCOPES, format_scope, grant_scopes, parse_scope
from app.core.security import PasswordHasher
from app.core.tokens import (
    AccessTokenSubject,
    AccessTokenVerifier,
    InvalidAccessTokenError,
    IssuedAccessToken,
    create_access_token,
    hash_refresh_token,
    new_refresh_token,
    successor_refresh_token,
)
from app.database import Database
from app.models.auth_session import AuthSession
from app.models.base import utcnow
from app.models.user import User
from app.repositories.sessions import RefreshGrant, SessionRepository, open_family
from app.repositories.users import (
    LoginAccount,
    TokenHolder,
    UserRepository,
    find_login_account,
    store_password_hash,
)
from app.services import audit, auth_cache
from app.services.login_guard import LoginGuard

security_log = logging.getLogger("app.security")


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Where a request came from, recorded on the session it opens."""

    ip: str | None
    user_agent: str | None


@dataclass(frozen=True, slots=True)
class TokenPair:
    """What a login or refresh hands back to the client."""

    access: IssuedAccessToken
    refresh_token: str
    scope: str
    session_id: str


def _issue_access(
    settings: Settings,
    user: User | TokenHolder,
    scopes: frozenset[str],
    session_id: str,
) -> IssuedAccessToken:
    return create_access_token(
        settings,
        AccessTokenSubject(
            user_id=user.id,
            email=user.email,
            role=user.role,
            scopes=scopes,
            first_name=user.first_name,
            last_name=user.last_name,
            desired_name=user.desired_name,
            session_id=session_id,
            token_version=user.token_version,
        ),
    )


async def login(
    database: Database,
    settings: Settings,
    hasher: PasswordHasher,
    guard: LoginGuard,
    *,
    identifier: str,
    password: str,
    requested_scope: str | None,
    client: ClientInfo,
) -> TokenPair:
    """Check the password and open a session (a new refresh-token family).

    Login reads and writes on plain connections, not a session: it loads no
    entity to change, so a unit of work would be pure overhead on the one
    route whose cost should be the hash alone. The lookup's connection goes
    back to the pool before the hash, which takes tens of milliseconds, longer
    while logins queue for the hash threads (a burst of logins held every
    pooled connection, and other requests waited for the pool).

    Raises:
        AccountLockedError: Too many failures for this account.
        TooManyRequestsError: Too many failures from this address.
        InvalidCredentialsError: Unknown login or wrong password (same answer).
        AccountDisabledError: Right password, deactivated account.
        InvalidScopeError: None of the requested scopes is allowed.
    """
    async with database.reader.connect() as connection:
        user = await find_login_account(connection, identifier)
    account = guard.account_key(user.id if user else None, identifier)
    async with guard.attempt(account, client.ip) as attempt:
        if user is None:
            await hasher.burn_verify_time(password)
            await guard.record_failure(attempt, "unknown_account")
            raise InvalidCredentialsError
        valid, upgraded_hash = await hasher.verify_and_update(
            password, user.hashed_password
        )
        if not valid:
            await guard.record_failure(attempt, "wrong_password")
            raise InvalidCredentialsError
        if not user.is_active:
            raise AccountDisabledError
        await guard.record_success(attempt)
    requested = parse_scope(requested_scope)
    scopes = grant_scopes(user.role, requested)
    if requested and not scopes:
        raise InvalidScopeError
    return await _open_session(
        database.engine, settings, user, scopes, client, upgraded_hash
    )


async def _open_session(
    engine: AsyncEngine,
    settings: Settings,
    user: LoginAccount,
    scopes: frozenset[str],
    client: ClientInfo,
    upgraded_hash: str | None,
) -> TokenPair:
    now = utcnow()
    family_id, scope = uuid.uuid4().hex, format_scope(scopes)
    family = {
        "id": family_id,
        "user_id": user.id,
        "scope": scope,
        "user_agent": (client.user_agent or "")[:255] or None,
        "ip_address": client.ip,
        "created_at": now,
        "last_used_at": now,
        "expires_at": now
        + timedelta(days=settings.REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS),
    }
    refresh_token = new_refresh_token()
    async with engine.begin() as connection:
        if upgraded_hash is not None:
            await store_password_hash(connection, user.id, upgraded_hash)  # bcrypt
        await open_family(connection, family, hash_refresh_token(refresh_token))
    return TokenPair(
        access=_issue_access(settings, user, scopes, family_id),
        refresh_token=refresh_token,
        scope=scope,
        session_id=family_id,
    )


def _expired(settings: Settings, grant: RefreshGrant, now: datetime) -> bool:
    """Whether the grant's family is past its absolute lifetime or idle too long."""
    idle = settings.refresh_idle_timeout
    return now >= grant.expires_at or now >= grant.last_used_at + idle


async def _audit_revocation(
    session: AsyncSession,
    principal: Principal | None,
    session_id: str,
    reason: str,
    *,
    user_id: int | None = None,
) -> None:
    await audit.record(
        session,
        actor=principal,
        actor_id=user_id,
        actor_name=None if principal else "system",
        action="session.revoke",
        entity_type="auth_session",
        entity_id=session_id,
        changes={"revoked_reason": {"old": None, "new": reason}},
    )


async def _revoke_for_reuse(
    session: AsyncSession, user_id: int, family_id: str
) -> None:
    repository = SessionRepository(session)
    revoked = await repository.revoke(
        utcnow(), "token_reuse", user_id=user_id, session_id=family_id
    )
    await _audit_revocation(session, None, family_id, "token_reuse", user_id=user_id)
    await session.commit()
    await auth_cache.forget(session, session_ids=revoked)
    security_log.warning(
        "refresh_token_reuse",
        extra={"event": "refresh_token_reuse", "user_id": user_id},
    )


def _resent_in_grace(settings: Settings, rotated_at: datetime, now: datetime) -> bool:
    """Whether a token rotated at `rotated_at` may get its successor again now."""
    grace = settings.REFRESH_TOKEN_REUSE_GRACE_SECONDS
    return grace > 0 and now - rotated_at <= timedelta(seconds=grace)


async def _reused(session: AsyncSession, grant: RefreshGrant) -> NoReturn:
    # A rotated token is reuse whatever the family's state; revoke once.
    if grant.revoked_at is None:
        await _revoke_for_reuse(session, grant.user.id, grant.session_id)
    raise TokenReusedError


async def refresh(
    session: AsyncSession, settings: Settings, refresh_token: str
) -> TokenPair:
    """Rotate a refresh token: the old one dies, a new pair is issued.

    An already-rotated token coming back means it leaked (or a race lost):
    the whole family is revoked. Unless it comes back within
    `REFRESH_TOKEN_REUSE_GRACE_SECONDS` of its rotation (a retry whose answer
    was lost, two tabs): then it gets the same successor the first request
    got (see `successor_refresh_token`), so the family stays one chain and
    the second presenter gets nothing the first did not.

    Raises:
        InvalidRefreshTokenError: Unknown, expired or revoked.
        TokenReusedError: Reuse detected; the family is now revoked.
    """
    repository = SessionRepository(session)
    grant = await repository.find_grant(hash_refresh_token(refresh_token))
    if grant is None:
        raise InvalidRefreshTokenError
    user, family_id, now = grant.user, grant.session_id, utcnow()
    if grant.rotated_at is not None and not _resent_in_grace(
        settings, grant.rotated_at, now
    ):
        await _reused(session, grant)
    if grant.revoked_at is not None or _expired(settings, grant, now):
        raise InvalidRefreshTokenError
    if not user.is_active:
        revoked = await repository.revoke(now, "user_inactive", user_id=user.id)
        await session.commit()
        await auth_cache.forget(session, session_ids=revoked)
        raise InvalidRefreshTokenError
    next_token = successor_refresh_token(settings, refresh_token)
    if grant.rotated_at is None:
        if await repository.claim_rotation(grant.token_id, now):
            await repository.add_token(family_id, hash_refresh_token(next_token))
            await repository.touch(family_id, now)
            await session.commit()
        elif not _resent_in_grace(settings, now, now):
            # Lost the race to rotate this very token: someone else presented
            # it too. (Within the grace, the winner stored the same successor.)
            await _reused(session, grant)
    scopes = grant_scopes(user.role, parse_scope(grant.scope))
    return TokenPair(
        access=_issue_access(settings, user, scopes, family_id),
        refresh_token=next_token,
        scope=format_scope(scopes),
        session_id=family_id,
    )


async def logout(session: AsyncSession, principal: Principal) -> None:
    """Revoke the caller's current session; its tokens stop working at once."""
    if principal.session_id is not None:
        revoked = await SessionRepository(session).revoke(
            utcnow(),
            "logout",
            user_id=principal.user_id,
            session_id=principal.session_id,
        )
        await _audit_revocation(session, principal, principal.session_id, "logout")
        await session.commit()
        # The token's own session even when this call revoked nothing: a
        # repeated logout may come while the first one's deletion is pending.
        await auth_cache.forget(session, session_ids={principal.session_id, *revoked})


async def logout_everywhere(session: AsyncSession, principal: Principal) -> int:
    """Revoke every session of the caller and every access token issued so far."""
    revoked = await SessionRepository(session).revoke(
        utcnow(), "logout_all", user_id=principal.user_id
    )
    user = await UserRepository(session).get(principal.user_id)
    if user is not None:
        user.token_version += 1
    await audit.record(
        session,
        actor=principal,
        action="session.revoke_all",
        entity_type="user",
        entity_id=principal.user_id,
        changes={"sessions_revoked": {"old": None, "new": len(revoked)}},
    )
    await session.commit()
    await auth_cache.forget(session, user_id=principal.user_id, session_ids=revoked)
    return len(revoked)


async def list_sessions(
    session: AsyncSession, settings: Settings, principal: Principal
) -> Sequence[AuthSession]:
    """The caller's sessions that can still refresh, most recently used first."""
    now = utcnow()
    idle = settings.refresh_idle_timeout
    repository = SessionRepository(session)
    return await repository.list_active(principal.user_id, now, now - idle)


async def revoke_session(
    session: AsyncSession, principal: Principal, session_id: str
) -> None:
    """Revoke one of the caller's sessions.

    Raises:
        NotFoundError: No such live session of the caller.
    """
    revoked = await SessionRepository(session).revoke(
        utcnow(), "revoked_by_user", user_id=principal.user_id, session_id=session_id
    )
    if not revoked:
        raise NotFoundError("Session not found")
    await _audit_revocation(session, principal, session_id, "revoked_by_user")
    await session.commit()
    await auth_cache.forget(session, session_ids=revoked)


async def authenticate(
    verifier: AccessTokenVerifier,
    cache: AuthCache,
    sessionmaker: async_sessionmaker[AsyncSession],
    token: str,
) -> Principal:
    """Turn a bearer token into a Principal, or refuse it.

    Checks the signature and claims, then that the user is active, the token
    version is current and the token's session is not revoked: from the cache
    when it has the answer, else with one query.

    Raises:
        InvalidTokenError: For any token that must not be honoured.
    """
    try:
        subject = verifier.verify(token)
    except InvalidAccessTokenError as exc:
        raise InvalidTokenError from exc
    entry = await auth_cache.access_entry(
        cache, sessionmaker, subject.user_id, subject.session_id
    )
    if entry is None:
        raise InvalidTokenError
    if not entry["is_active"] or entry["token_version"] != subject.token_version:
        raise InvalidTokenError
    role = entry["role"]
    return Principal(
        user_id=subject.user_id,
        email=entry["email"],
        role=role,
        scopes=subject.scopes & ROLE_SCOPES.get(role, frozenset()),
        first_name=entry["first_name"],
        last_name=entry["last_name"],
        desired_name=entry["desired_name"],
        session_id=subject.session_id,
    )
