"""Queries of items and attachments. Flush, never commit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    func,
    insert,
    literal,
    select,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.pagination import Cursor
from app.models.item import Attachment, Item
from app.repositories.json_rows import json_array, json_row_class, parse_row
from app.repositories.search import LIKE_ESCAPE, escape_like
from app.schemas.item import ItemFilters, ItemPublic, SortField, SortOrder

# Lists are plain Core queries on the table: no ORM compile step, no instances.
ITEMS = cast("Table", Item.__table__)
SORT_COLUMNS: dict[SortField, Any] = {
    SortField.CREATED_AT: ITEMS.c.created_at,
    SortField.UPDATED_AT: ITEMS.c.updated_at,
    SortField.TITLE: ITEMS.c.title,
}


def _conditions(owner_id: int, filters: ItemFilters) -> list[ColumnElement[bool]]:
    columns = ITEMS.c
    conditions = [columns.owner_id == owner_id]
    if filters.status is not None:
        conditions.append(columns.status == filters.status.value)
    if filters.created_after is not None:
        conditions.append(columns.created_at >= filters.created_after)
    if filters.created_before is not None:
        conditions.append(columns.created_at < filters.created_before)
    if filters.search:
        pattern = f"%{escape_like(filters.search)}%"
        conditions.append(func.lower(columns.title).like(pattern, escape=LIKE_ESCAPE))
    return conditions


def _count(conditions: list[ColumnElement[bool]]) -> Select[Any]:
    return select(func.count()).select_from(ITEMS).where(*conditions)


def _ordered(statement: Select[Any], filters: ItemFilters) -> Select[Any]:
    column = SORT_COLUMNS[filters.sort]
    if filters.order is SortOrder.DESC:
        return statement.order_by(column.desc(), ITEMS.c.id.desc())
    return statement.order_by(column.asc(), ITEMS.c.id.asc())


def _after(cursor: Cursor, filters: ItemFilters) -> ColumnElement[bool]:
    column = SORT_COLUMNS[filters.sort]
    key = tuple_(column, ITEMS.c.id)
    # Typed literals: the value is bound exactly as the column stores it.
    position = tuple_(literal(cursor.value, column.type), literal(cursor.last_id))
    return key < position if filters.order is SortOrder.DESC else key > position


# Lists read each item as the JSON object the API shows, rendered by the
# database (see json_rows): no ORM instances, no per-column Python values.
ItemJsonRow = json_row_class(ITEMS, list(ItemPublic.model_fields))


def cursor_after(item: Mapping[str, Any], filters: ItemFilters) -> Cursor:
    """The cursor that continues after `item` (a row of `page`) in this ordering."""
    value = item[filters.sort.value]
    if filters.sort is not SortField.TITLE:
        value = datetime.fromisoformat(value)
    return Cursor(filters.sort.value, filters.order.value, value, item["id"])


_INSERT = insert(ITEMS).returning(*ITEMS.c)


@dataclass(frozen=True, slots=True)
class ItemRows:
    """A page of items as JSON, ready for the response."""

    items: Any  # a JSON array for orjson (see json_rows.json_array)
    last: dict[str, Any] | None  # the last item, when another page follows
    total: int | None  # when asked for, unless the page is empty


class ItemRepository:
    """Load and store items."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's session."""
        self.session = session

    async def get(self, item_id: int) -> Item | None:
        """The item with this id, or None."""
        return await self.session.get(Item, item_id)

    async def insert(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Insert one item (a Core INSERT: no unit of work); its row as stored."""
        result = await self.session.execute(_INSERT, dict(values))
        return dict(result.mappings().one())

    async def add_all(self, items: Sequence[Item]) -> None:
        """Insert items and flush (ids are assigned)."""
        self.session.add_all(items)
        await self.session.flush()

    async def delete(self, item: Item) -> None:
        """Delete the row (its attachments' rows cascade)."""
        await self.session.delete(item)
        await self.session.flush()

    async def page(
        self,
        owner_id: int,
        filters: ItemFilters,
        *,
        limit: int,
        offset: int = 0,
        cursor: Cursor | None = None,
        with_total: bool = False,
    ) -> ItemRows:
        """One page of an owner's items in one statement, whatever its size.

        With a cursor, keyset pagination (stable under inserts and deletes, cost
        independent of depth); otherwise limit/offset. With `with_total`, the
        count of every match rides along as a scalar subquery (computed once,
        in the same snapshot), so a page and its total are one round trip. One
        extra row tells whether another page follows.
        """
        conditions = _conditions(owner_id, filters)
        columns: list[Any] = [ItemJsonRow()]
        if with_total:
            columns.append(_count(conditions).scalar_subquery())
        statement = select(*columns).select_from(ITEMS).where(*conditions)
        if cursor is not None:
            statement = statement.where(_after(cursor, filters))
        else:
            statement = statement.offset(offset)
        statement = _ordered(statement, filters).limit(limit + 1)
        rows = (await self.session.execute(statement)).all()
        texts = [row[0] for row in rows[:limit]]
        more = len(rows) > limit
        return ItemRows(
            items=json_array(texts, self.session.get_bind().dialect.name),
            last=parse_row(texts[-1]) if more else None,
            total=int(rows[0][1]) if with_total and rows else None,
        )

    async def count(self, owner_id: int, filters: ItemFilters) -> int:
        """How many of an owner's items match the filters."""
        statement = _count(_conditions(owner_id, filters))
        return int((await self.session.execute(statement)).scalar_one())

    async def attachment_keys(self, item_id: int) -> list[str]:
        """Storage keys of an item's attachments (to remove the files)."""
        statement = select(Attachment.storage_key).where(Attachment.item_id == item_id)
        return list((await self.session.execute(statement)).scalars().all())
