"""Single-use emailed tokens (hashed at rest)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.outbox import ActionToken


async def find_usable(
    session: AsyncSession, token_hash: str, purpose: str, now: datetime
) -> ActionToken | None:
    """The unused, unexpired token with this hash and purpose, or None."""
    statement = select(ActionToken).where(
        ActionToken.token_hash == token_hash,
        ActionToken.purpose == purpose,
        ActionToken.used_at.is_(None),
        ActionToken.expires_at > now,
    )
    return (await session.execute(statement)).scalar_one_or_none()


async def consume(session: AsyncSession, token_id: int, now: datetime) -> bool:
    """Mark a token used, only if nobody did first (single use under races)."""
    result = await session.execute(
        update(ActionToken)
        .where(ActionToken.id == token_id, ActionToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


async def consume_all(
    session: AsyncSession, user_id: int, purpose: str, now: datetime
) -> None:
    """Retire every outstanding token of a purpose (e.g. after a reset)."""
    await session.execute(
        update(ActionToken)
        .where(
            ActionToken.user_id == user_id,
            ActionToken.purpose == purpose,
            ActionToken.used_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
