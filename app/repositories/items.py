"""Queries of items and attachments. Flush, never commit."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Table,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a page statement looks like, apart from its values.

    `bound` names the parameters it takes (`_values`' keys, plus `after_*` for
    a cursor or `offset`), so the shape follows from the values themselves.
    """

    bound: frozenset[str]
    sort: SortField
    order: SortOrder
    with_total: bool


def _conditions(bound: frozenset[str]) -> list[ColumnElement[bool]]:
    columns = ITEMS.c
    conditions = [columns.owner_id == bindparam("owner_id", type_=Integer())]
    if "status" in bound:
        conditions.append(columns.status == bindparam("status", type_=String()))
    if "created_after" in bound:
        since = bindparam("created_after", type_=columns.created_at.type)
        conditions.append(columns.created_at >= since)
    if "created_before" in bound:
        until = bindparam("created_before", type_=columns.created_at.type)
        conditions.append(columns.created_at < until)
    if "pattern" in bound:
        pattern = bindparam("pattern", type_=String())
        conditions.append(func.lower(columns.title).like(pattern, escape=LIKE_ESCAPE))
    return conditions


def _values(owner_id: int, filters: ItemFilters) -> dict[str, Any]:
    values: dict[str, Any] = {"owner_id": owner_id}
    if filters.status is not None:
        values["status"] = filters.status.value
    if filters.created_after is not None:
        values["created_after"] = filters.created_after
    if filters.created_before is not None:
        values["created_before"] = filters.created_before
    if filters.search:
        values["pattern"] = f"%{escape_like(filters.search)}%"
    return values


def _count(conditions: list[ColumnElement[bool]]) -> Select[Any]:
    return select(func.count()).select_from(ITEMS).where(*conditions)


def _ordered(statement: Select[Any], shape: _Shape) -> Select[Any]:
    column = SORT_COLUMNS[shape.sort]
    if shape.order is SortOrder.DESC:
        return statement.order_by(column.desc(), ITEMS.c.id.desc())
    return statement.order_by(column.asc(), ITEMS.c.id.asc())


def _after(shape: _Shape) -> ColumnElement[bool]:
    column = SORT_COLUMNS[shape.sort]
    key = tuple_(column, ITEMS.c.id)
    # Typed: the value is bound exactly as the column stores it.
    position = tuple_(
        bindparam("after_value", type_=column.type),
        bindparam("after_id", type_=Integer()),
    )
    return key < position if shape.order is SortOrder.DESC else key > position


# Statements are built once per shape and reused with new values: building a
# select and walking it for its cache key cost about a third of a list
# request's database time. At most 2^4 filter sets x 3 sorts x 2 orders x 2
# paging modes x 2 = 384 shapes.
@functools.cache
def _page_statement(shape: _Shape) -> Select[Any]:
    conditions = _conditions(shape.bound)
    columns: list[Any] = [ItemJsonRow()]
    if shape.with_total:
        columns.append(_count(conditions).scalar_subquery())
    statement = select(*columns).select_from(ITEMS).where(*conditions)
    if "after_id" in shape.bound:
        statement = statement.where(_after(shape))
    else:
        statement = statement.offset(bindparam("offset", type_=Integer()))
    return _ordered(statement, shape).limit(bindparam("limit", type_=Integer()))


@functools.cache
def _count_statement(bound: frozenset[str]) -> Select[Any]:
    return _count(_conditions(bound))


# Lists read each item as the JSON object the API shows, rendered by the
# database (see json_rows): no ORM instances, no per-column Python values.
ItemJsonRow = json_row_class(ITEMS, list(ItemPublic.model_fields))


_ITEM_VIEW = select(ItemJsonRow(), ITEMS.c.owner_id, ITEMS.c.version).where(
    ITEMS.c.id == bindparam("item_id", type_=Integer())
)


@dataclass(frozen=True, slots=True)
class ItemView:
    """One item as the API shows it, with what access checks and ETags need."""

    json: orjson.Fragment  # the item as ItemPublic writes it (see json_rows)
    owner_id: int
    version: int


async def find_item_view(connection: AsyncConnection, item_id: int) -> ItemView | None:
    """The item with this id as JSON rendered by the database, or None."""
    row = (await connection.execute(_ITEM_VIEW, {"item_id": item_id})).first()
    if row is None:
        return None
    return ItemView(orjson.Fragment(row[0]), row.owner_id, row.version)


def cursor_after(item: Mapping[str, Any], filters: ItemFilters) -> Cursor:
    """The cursor that continues after `item` (a row of `page`) in this ordering."""
    value = item[filters.sort.value]
    if filters.sort is not SortField.TITLE:
        value = datetime.fromisoformat(value)
    return Cursor(filters.sort.value, filters.order.value, value, item["id"])


# Rows come back in the order of the parameter sets, however many at once.
_INSERT = insert(ITEMS).returning(*ITEMS.c, sort_by_parameter_order=True)


@dataclass(frozen=True, slots=True)
class ItemRows:
    """A page of items as JSON, ready for the response."""

    items: Any  # a JSON array for orjson (see json_rows.json_array)
    last: dict[str, Any] | None  # the last item, when another page follows
    total: int | None  # when asked for, unless the page is empty


_ITEM_ROW = select(*ITEMS.c).where(ITEMS.c.id == bindparam("item_id", type_=Integer()))
# The columns to change come with each call's parameters (one compiled form
# per set of them); the WHERE on the version read is the optimistic lock.
_UPDATE_IF_VERSION = (
    update(ITEMS)
    .where(
        ITEMS.c.id == bindparam("item_id", type_=Integer()),
        ITEMS.c.version == bindparam("read_version", type_=Integer()),
    )
    .values(version=ITEMS.c.version + 1)
    .returning(*ITEMS.c)
)


class ItemRepository:
    """Load and store items."""

    def __init__(self, session: AsyncSession) -> None:
        """Bind to the request's session."""
        self.session = session

    async def get(self, item_id: int) -> Item | None:
        """The item with this id, or None."""
        return await self.session.get(Item, item_id)

    async def get_locked(self, item_id: int) -> Item | None:
        """The item, locked until the transaction ends, attachments included.

        PostgreSQL: `FOR UPDATE`, which also holds back a new attachment (its
        foreign-key check waits for the lock). SQLite has no row locks: a no-op
        UPDATE first takes the single write lock, before anything is read.
        """
        if self.session.bind is not None and self.session.bind.dialect.name == "sqlite":
            await self.session.execute(
                update(ITEMS)
                .where(ITEMS.c.id == item_id)
                .values(version=ITEMS.c.version)
            )
        return await self.session.get(
            Item, item_id, with_for_update=True, populate_existing=True
        )

    async def find_row(self, item_id: int) -> dict[str, Any] | None:
        """The item with this id as its stored columns (no entity), or None."""
        result = await self.session.execute(_ITEM_ROW, {"item_id": item_id})
        row = result.mappings().first()
        return None if row is None else dict(row)

    async def update_if_version(
        self, item_id: int, read_version: int, values: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Set `values` and bump the version, only if it is still `read_version`.

        Returns:
            The stored row after the change, or None when the item has another
            version by now (or is gone): a concurrent writer won.
        """
        parameters = {**values, "item_id": item_id, "read_version": read_version}
        result = await self.session.execute(_UPDATE_IF_VERSION, parameters)
        row = result.mappings().first()
        return None if row is None else dict(row)

    async def insert(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Insert items in one statement (Core: no unit of work); rows as stored.

        Returns:
            The stored rows (ids and defaults filled in), in the order given.
        """
        result = await self.session.execute(_INSERT, [dict(row) for row in rows])
        return [dict(row) for row in result.mappings()]

    async def delete(self, item: Item) -> None:
        """Delete the row (its attachments' rows cascade)."""
        await self.session.delete(item)
        await self.session.flush()

    async def attachment_keys(self, item_id: int) -> list[str]:
        """Storage keys of an item's attachments (to remove the files)."""
        statement = select(Attachment.storage_key).where(Attachment.item_id == item_id)
        return list((await self.session.execute(statement)).scalars().all())

    async def owner_attachment_keys(self, owner_id: int) -> list[str]:
        """Storage keys of every attachment of an owner's items."""
        statement = (
            select(Attachment.storage_key)
            .join(Item, Item.id == Attachment.item_id)
            .where(Item.owner_id == owner_id)
        )
        return list((await self.session.execute(statement)).scalars().all())


class ItemPages:
    """Pages of an owner's items, read on a plain connection.

    A list needs no unit of work: a session would only add its transaction
    bookkeeping and its request dependency (FastAPI wraps each generator
    dependency in an exit stack and a shielded cancel scope). Without both,
    a 100-item page served 16 % more requests per second.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        """Bind to a connection (its transaction begins with the first read)."""
        self.connection = connection

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
        values = _values(owner_id, filters)
        if cursor is not None:
            values.update(after_value=cursor.value, after_id=cursor.last_id)
        else:
            values["offset"] = offset
        values["limit"] = limit + 1
        shape = _Shape(frozenset(values), filters.sort, filters.order, with_total)
        statement = _page_statement(shape)
        rows = (await self.connection.execute(statement, values)).all()
        texts = [row[0] for row in rows[:limit]]
        more = len(rows) > limit
        return ItemRows(
            items=json_array(texts),
            last=parse_row(texts[-1]) if more else None,
            total=int(rows[0][1]) if with_total and rows else None,
        )

    async def count(self, owner_id: int, filters: ItemFilters) -> int:
        """How many of an owner's items match the filters."""
        values = _values(owner_id, filters)
        statement = _count_statement(frozenset(values))
        return int((await self.connection.execute(statement, values)).scalar_one())
