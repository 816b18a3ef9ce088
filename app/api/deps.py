"""Dependencies shared by the routes, as `Annotated` aliases.

Every dependency is `async def`, even when it only reads `app.state`: FastAPI
runs plain `def` dependencies in a thread pool, a thread hop per call per
request that costs more than the work itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import OAuth2PasswordBearer, SecurityScopes
from sqlalchemy.ext.asyncio import AsyncSession

from app.core import metrics
from app.core.config import Settings
from app.core.domain import MAX_ID
from app.core.exceptions import (
    InsufficientScopeError,
    InvalidTokenError,
    NotAuthenticatedError,
    RateLimitedError,
)
from app.core.middleware import RATE_LIMIT_STATE
from app.core.principal import Principal
from app.core.ratelimit import EmailThrottle, RateLimiter
from app.core.scopes import ACCOUNT_READ, ACCOUNT_WRITE, SCOPE_DESCRIPTIONS
from app.core.security import PasswordHasher
from app.core.storage import FileStorage
from app.database import Database
from app.services import auth, auth_cache
from app.services.auth import ClientInfo
from app.services.items import ItemCreator
from app.services.login_guard import LoginGuard


async def get_settings_from_app(request: Request) -> Settings:
    """The settings the application was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    """The application's database (engine + session factory)."""
    database: Database = request.app.state.database
    return database


async def get_password_hasher(request: Request) -> PasswordHasher:
    """The application's password hasher."""
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


async def get_item_creator(request: Request) -> ItemCreator:
    """The application's item creator (it batches concurrent creates)."""
    creator: ItemCreator = request.app.state.item_creator
    return creator


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One session per request; closing it rolls back anything not committed."""
    # app.state directly: every sub-dependency costs FastAPI time per request.
    database: Database = request.app.state.database
    async with database.sessionmaker() as session:
        auth_cache.attach(session, request.app.state.auth_cache)
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A read session per request, for routes that change nothing.

    Its statements run in autocommit on PostgreSQL (`Database.reader`): one
    round trip each instead of BEGIN, the statement, ROLLBACK.
    """
    database: Database = request.app.state.database
    async with database.read_sessionmaker() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
DatabaseDep = Annotated[Database, Depends(get_database)]
HasherDep = Annotated[PasswordHasher, Depends(get_password_hasher)]
ItemCreatorDep = Annotated[ItemCreator, Depends(get_item_creator)]
# scope="function": the session closes when the route returns, before the response
# is sent; services have committed by then (ARCHITECTURE.md, request flow step 3).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session, scope="function")]


security_log = logging.getLogger("app.security")

oauth2_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/login",
    scopes=SCOPE_DESCRIPTIONS,
    auto_error=False,  # we answer 401 ourselves, in the envelope, per RFC 6750
)


async def get_login_guard(request: Request) -> LoginGuard:
    """Brute-force protection bound to the app's attempt store."""
    return LoginGuard(request.app.state.login_attempts, request.app.state.settings)


async def client_info(request: Request) -> ClientInfo:
    """The caller's address and user agent."""
    return ClientInfo(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


async def get_principal(
    security_scopes: SecurityScopes,
    request: Request,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> Principal:
    """Authenticate the bearer token and check the scopes the route declares.

    Raises:
        NotAuthenticatedError: No bearer token (401, bare `Bearer` challenge).
        InvalidTokenError: Bad, expired or revoked token (401 `invalid_token`).
        InsufficientScopeError: Valid token without a required scope (403).
    """
    if not token:
        raise NotAuthenticatedError
    try:
        # app.state directly: every sub-dependency costs FastAPI time per request.
        state = request.app.state
        principal = await auth.authenticate(
            state.token_verifier, state.auth_cache, state.database.sessionmaker, token
        )
    except InvalidTokenError:
        security_log.warning("invalid_token", extra=_event("invalid_token", request))
        raise
    request.state.user_id = principal.user_id
    missing = [scope for scope in security_scopes.scopes if not principal.has(scope)]
    if missing:
        security_log.warning(
            "insufficient_scope",
            extra=_event("insufficient_scope", request, missing=missing),
        )
        raise InsufficientScopeError(" ".join(security_scopes.scopes))
    # Resource writes are limited per user; the auth routes (logout, ...) have
    # their own per-IP limit and must stay usable. A password change counts in
    # a bucket of its own: someone holding a stolen token must not be able to
    # use up the owner's write budget and so keep them from changing it.
    # The raw path: `request.url` would build a whole URL object per request.
    path: str = request.scope["path"]
    if request.method not in SAFE_METHODS and "/auth/" not in path:
        bucket = "password" if path.endswith(PASSWORD_CHANGE_PATH) else "writes"
        await _enforce(
            request,
            state.settings.RATE_LIMIT_WRITES,
            bucket,
            f"user:{principal.user_id}",
        )
    return principal


PASSWORD_CHANGE_PATH = "/users/me/password"  # noqa: S105 - a route, not a secret


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _enforce(request: Request, limit: str, name: str, key: str) -> None:
    limiter: RateLimiter = request.app.state.rate_limiter
    decision = await limiter.hit(limit, name, key)
    if decision is None:
        return
    if not decision.allowed:
        metrics.RATE_LIMITED.labels(name).inc()
        raise RateLimitedError(decision.reset_seconds, headers=decision.headers())
    # Not on the dependency's `Response`: FastAPI drops its headers when a
    # route returns its own Response (POST /items, PATCH /items/{id}) or an
    # error is raised later. The middleware adds these to whatever is sent.
    setattr(request.state, RATE_LIMIT_STATE, decision.headers())


async def limit_by_client_ip(request: Request, settings: SettingsDep) -> None:
    """Per-IP limit of the authentication routes (signup, login, refresh, ...)."""
    ip = request.client.host if request.client else "unknown"
    await _enforce(request, settings.RATE_LIMIT_AUTH, "auth", f"ip:{ip}")


def _event(name: str, request: Request, **fields: object) -> dict[str, object]:
    return {
        "event": name,
        "client_ip": request.client.host if request.client else None,
        "path": request.url.path,
        "user_id": getattr(request.state, "user_id", None),
        **fields,
    }


# Any valid token, whatever its scopes: only `POST /auth/logout` (ending the
# token's own session must always be possible) and routes that check per user.
CurrentPrincipal = Annotated[Principal, Security(get_principal)]
# The caller's own account and sessions.
AccountReader = Annotated[Principal, Security(get_principal, scopes=[ACCOUNT_READ])]
AccountWriter = Annotated[Principal, Security(get_principal, scopes=[ACCOUNT_WRITE])]
LoginGuardDep = Annotated[LoginGuard, Depends(get_login_guard)]
ClientDep = Annotated[ClientInfo, Depends(client_info)]


def require(*scopes: str) -> Any:
    """`Security` dependency requiring every one of `scopes`; shown in OpenAPI."""
    return Security(get_principal, scopes=list(scopes))


async def get_storage(request: Request) -> FileStorage:
    """The application's file storage."""
    storage: FileStorage = request.app.state.storage
    return storage


StorageDep = Annotated[FileStorage, Depends(get_storage)]


async def get_email_throttle(request: Request) -> EmailThrottle:
    """The per-recipient limits of link emails."""
    throttle: EmailThrottle = request.app.state.email_throttle
    return throttle


EmailThrottleDep = Annotated[EmailThrottle, Depends(get_email_throttle)]


ResourceId = Annotated[int, Path(ge=1, le=MAX_ID)]
