"""Audit rows: append and query. There is deliberately no update or delete."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Select, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.audit import AuditLog
from app.schemas.audit import AuditFilters

# A Core INSERT on the table, with the values as parameters: one cached
# statement, no unit-of-work bookkeeping for a row nobody reads back.
_INSERT = insert(cast("Table", AuditLog.__table__))


async def append(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert audit rows in the caller's transaction (committed with it)."""
    await session.execute(_INSERT, list(rows))


def _filtered(statement: Select[Any], filters: AuditFilters) -> Select[Any]:
    conditions: list[Any] = []
    if filters.actor_id is not None:
        conditions.append(AuditLog.actor_id == filters.actor_id)
    if filters.entity_type is not None:
        conditions.append(AuditLog.entity_type == filters.entity_type)
    if filters.entity_id is not None:
        conditions.append(AuditLog.entity_id == filters.entity_id)
    if filters.action is not None:
        conditions.append(AuditLog.action == filters.action)
    if filters.since is not None:
        conditions.append(AuditLog.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(AuditLog.occurred_at < filters.until)
    return statement.where(*conditions)


async def search(
    session: AsyncSession, filters: AuditFilters, *, limit: int, offset: int
) -> tuple[Sequence[AuditLog], int]:
    """A page of audit rows, newest first, and the total matching."""
    page = (
        _filtered(select(AuditLog), filters)
        .order_by(AuditLog.occurred_at.desc(), AuditLog.id.desc())
        .limit(limit)
        .offset(offset)
    )
    total = _filtered(select(func.count()).select_from(AuditLog), filters)
    rows = (await session.execute(page)).scalars().all()
    return rows, int((await session.execute(total)).scalar_one())
