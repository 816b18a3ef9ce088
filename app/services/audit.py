"""Write audit rows inside the caller's transaction, with secrets redacted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.logging import RequestOrigin
from app.core.principal import Principal
from app.models.audit import AuditLog
from app.models.base import utcnow
from app.repositories import audit as audit_repository
from app.schemas.audit import AuditFilters

REDACTED = "[REDACTED]"
_SECRET_MARKERS = ("password", "hash", "token", "secret")


def _is_secret(field: str) -> bool:
    lowered = field.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return value


def diff(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """`{field: {"old": ..., "new": ...}}` for every field that differs.

    Secrets and hashes are recorded as changed, never with their values.

    Args:
        old: Values before (None for a create).
        new: Values after (None for a delete).

    Returns:
        The changed fields.
    """
    before, after = old or {}, new or {}
    changes: dict[str, dict[str, Any]] = {}
    for field in sorted(before.keys() | after.keys()):
        was, now = before.get(field), after.get(field)
        if was == now:
            continue
        if _is_secret(field):
            changes[field] = {
                "old": REDACTED if was is not None else None,
                "new": REDACTED,
            }
        else:
            changes[field] = {"old": _jsonable(was), "new": _jsonable(now)}
    return changes


def entry(
    *,
    actor: Principal | None,
    action: str,
    entity_type: str,
    entity_id: object,
    changes: dict[str, dict[str, Any]],
    actor_id: int | None = None,
    actor_name: str | None = None,
    origin: RequestOrigin | None = None,
) -> dict[str, Any]:
    """One audit row, to write with `record_all`.

    Args:
        actor: Who did it (None for anonymous actions such as signup).
        action: What happened, e.g. `item.update`.
        entity_type: The kind of thing changed, e.g. `item`.
        entity_id: Its id.
        changes: Output of `diff`.
        actor_id: Overrides the actor's id (e.g. a user signing themselves up).
        actor_name: Overrides the actor's display name.
        origin: The request that caused it; defaults to the one being served.

    Returns:
        The row's values.
    """
    origin = origin or RequestOrigin.current()
    return {
        "occurred_at": utcnow(),
        "actor_id": actor_id if actor_id is not None else (actor and actor.user_id),
        "actor_name": actor_name or (actor.display_name if actor else None),
        "action": action,
        "entity_type": entity_type,
        "entity_id": str(entity_id),
        "changed_fields": changes,
        "request_id": origin.request_id,
        "client_ip": origin.client_ip,
    }


async def record(
    session: AsyncSession,
    *,
    actor: Principal | None,
    action: str,
    entity_type: str,
    entity_id: object,
    changes: dict[str, dict[str, Any]],
    actor_id: int | None = None,
    actor_name: str | None = None,
) -> None:
    """Write one audit row in the current transaction (committed with the change).

    The arguments after `session` are `entry`'s.
    """
    row = entry(
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        changes=changes,
        actor_id=actor_id,
        actor_name=actor_name,
    )
    await record_all(session, [row])


async def record_all(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write audit rows made by `entry` in the current transaction, in one statement."""
    await audit_repository.append(session, rows)


async def search(
    session: AsyncSession, filters: AuditFilters, *, limit: int, offset: int
) -> tuple[Sequence[AuditLog], int]:
    """A page of the audit trail, newest first, and the total."""
    return await audit_repository.search(session, filters, limit=limit, offset=offset)


USER_AUDITED_FIELDS = (
    "email",
    "username",
    "hashed_password",
    "first_name",
    "last_name",
    "desired_name",
    "phone",
    "age",
    "role",
    "is_active",
    "is_verified",
)


def snapshot(entity: object, fields: Sequence[str]) -> dict[str, Any]:
    """The audited fields of `entity`, for `diff`."""
    return {field: getattr(entity, field) for field in fields}
