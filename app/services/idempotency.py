"""`Idempotency-Key`: replay the first answer for the same key and request."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import AppError
from app.models.base import utcnow
from app.models.idempotency import IdempotencyKey
from app.repositories.idempotency import IdempotencyRepository


class IdempotencyKeyReusedError(AppError):
    """The key was already used for a different request."""

    status_code = 422
    code = "IDEMPOTENCY_KEY_REUSED"
    message = "This Idempotency-Key was used with a different request body"


@dataclass(frozen=True, slots=True)
class IdempotentRequest:
    """Who sent which key for which operation and body."""

    user_id: int
    scope: str
    key: str
    fingerprint: str
    ttl: timedelta


def fingerprint(body: Any) -> str:
    """A digest of the request body in canonical JSON (key order ignored)."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def stored_answer(
    session: AsyncSession, request: IdempotentRequest
) -> dict[str, Any] | None:
    """The first answer given to this key, if it is still kept.

    Raises:
        IdempotencyKeyReusedError: Same key, different body.
    """
    repository = IdempotencyRepository(session)
    entry = await repository.get(request.user_id, request.scope, request.key)
    if entry is None:
        return None
    if entry.created_at < utcnow() - request.ttl:
        await repository.delete(entry)
        return None
    if entry.request_hash != request.fingerprint:
        raise IdempotencyKeyReusedError
    return entry.response_body


async def remember(
    session: AsyncSession, request: IdempotentRequest, status: int, body: dict[str, Any]
) -> None:
    """Keep the answer with the change, in the same transaction.

    Raises:
        DuplicateKeyError: A concurrent request with this key got there first.
    """
    await IdempotencyRepository(session).add(
        IdempotencyKey(
            user_id=request.user_id,
            key=request.key,
            scope=request.scope,
            request_hash=request.fingerprint,
            status_code=status,
            response_body=body,
        )
    )
