"""The access check's cache: filled from the database, emptied after changes.

Services call `forget` right after committing a change
that affects access (status, role, names, token version, revocations); the cache
travels with the database session (`session.info`), so services need no extra
argument and code without a cache (the CLI) simply skips it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.cache import AuthCache, UserEntry
from app.models.user import User
from app.repositories.sessions import load_access_state
from app.schemas.user import UserPublic

CACHE_KEY = "auth_cache"


def attach(session: AsyncSession, cache: AuthCache) -> None:
    """Make `cache` the one this session's services invalidate."""
    session.info[CACHE_KEY] = cache


def _cache_of(session: AsyncSession) -> AuthCache | None:
    cache: AuthCache | None = session.info.get(CACHE_KEY)
    return cache


def user_entry(user: User) -> UserEntry:
    """The cached form of a user: its public fields plus access facts."""
    entry: dict[str, Any] = UserPublic.model_validate(user).model_dump(mode="json")
    entry["token_version"] = user.token_version
    return entry


async def access_entry(
    cache: AuthCache,
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: int,
    session_id: str | None,
) -> UserEntry | None:
    """The user behind a token, from the cache or (one query) the database.

    A database session is opened only on a cache miss, so a warm request
    touches no connection at all.

    Returns:
        None when the user is gone or the token's session is revoked.
    """
    cached = await cache.get(user_id, session_id)
    if cached.entry is not None:
        return cached.entry
    async with sessionmaker() as session:
        state = await load_access_state(session, user_id, session_id)
    if state is None or state.session_revoked:
        return None
    entry = user_entry(state.user)
    if state.user.is_active:
        # Dropped if a change committed meanwhile: `state` may predate it.
        await cache.put(entry, session_id, cached)
    return entry


async def forget(
    session: AsyncSession,
    *,
    user_id: int | None = None,
    session_ids: Iterable[str] = (),
) -> None:
    """Drop a user's entry and revoked sessions' markers (call after the commit).

    With Redis this may wait: it returns once no process can still answer from
    an entry older than the change, even when Redis failed meanwhile
    (`app.core.cache`). The caller's 2xx must come after it.
    """
    cache = _cache_of(session)
    ids = list(session_ids)
    if cache is not None and (user_id is not None or ids):
        await cache.forget(user_id, ids)
