"""Rows rendered as JSON objects by the database itself, for list pages.

A page of 100 items read as typed columns costs 1,200 Python values, 200
datetime parses and 100 dicts before orjson turns them back into text; that
was most of a list request's CPU. Here SQLite (`json_object`) or PostgreSQL
(`to_json` per value, joined) writes each row as one compact JSON string, in
the API's field order and formats (timestamps as ISO 8601 UTC with `Z`,
microseconds only when not zero), byte for byte what pydantic and orjson write
elsewhere, so a page goes into the response as it is, never parsed.

The SQL is fixed per table and dialect, so the expression carries no bound
values and a constant cache key: building and caching a statement around it
costs no more than selecting one column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson
from sqlalchemy import Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import String

from app.models.base import UTCDateTime


def _sqlite_time(column: str) -> str:
    # SQLAlchemy stores "YYYY-MM-DD HH:MM:SS.ffffff" (UTC) on SQLite: string
    # surgery, not strftime (which parses each date: 40 % of a page's query).
    date, time = f"substr({column}, 1, 10)", f"substr({column}, 12, 8)"
    return (
        f"CASE WHEN substr({column}, 21) = '000000' THEN {date} || 'T' || {time} "
        f"ELSE replace({column}, ' ', 'T') END || 'Z'"
    )


def _postgresql_time(column: str) -> str:
    utc = f"({column} AT TIME ZONE 'UTC')"
    return (
        f"to_char({utc}, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN "
        f"extract(microseconds FROM {utc})::bigint % 1000000 = 0 THEN '' "
        f"ELSE to_char({utc}, '.US') END || 'Z'"
    )


def _sqlite_object(fields: list[tuple[str, str, bool]]) -> str:
    pairs = ", ".join(
        f"'{name}', {_sqlite_time(sql) if is_time else sql}"
        for name, sql, is_time in fields
    )
    return f"json_object({pairs})"


def _postgresql_object(fields: list[tuple[str, str, bool]]) -> str:
    # json_build_object's text has spaces (`"id" : 1`): orjson would have to
    # read it again. This writes the compact text orjson writes: to_json
    # escapes a string as orjson does, and NULL (through ||) becomes null.
    pieces = []
    for index, (name, sql, is_time) in enumerate(fields):
        key = ("{" if index == 0 else ",") + f'"{name}":'
        value = (
            f"'\"' || {_postgresql_time(sql)} || '\"'"
            if is_time
            else (f"to_json({sql})::text")
        )
        pieces += [f"'{key}'", f"coalesce({value}, 'null')"]
    return "(" + " || ".join([*pieces, "'}'"]) + ")"


_DIALECTS: dict[str, Callable[[list[tuple[str, str, bool]]], str]] = {
    "sqlite": _sqlite_object,
    "postgresql": _postgresql_object,
}


class JsonRow(ColumnElement[str]):
    """`fields` of a row of `table` as one JSON object (a string column)."""

    type = String()
    inherit_cache = True
    # No children and no values: the SQL depends only on the class, so the
    # cache key stays constant (one subclass per table and field list).
    _traverse_internals: list[Any] = []  # noqa: RUF012 - SQLAlchemy protocol
    table: Table
    fields: Sequence[str]


def json_row_class(table: Table, fields: Sequence[str]) -> type[JsonRow]:
    """A `JsonRow` type for these fields of `table`, in this order.

    Args:
        table: The table the row comes from.
        fields: Column names, in the order the JSON object lists them.

    Returns:
        A `JsonRow` subclass; instantiate it inside a `select()` on `table`.
    """
    missing = [field for field in fields if field not in table.c]
    if missing:
        raise ValueError(f"not columns of {table.name}: {missing}")
    name = f"{table.name.title().replace('_', '')}JsonRow"
    attributes = {"table": table, "fields": tuple(fields), "inherit_cache": True}
    return type(name, (JsonRow,), attributes)


@compiles(JsonRow)
def _compile(element: JsonRow, compiler: SQLCompiler, **kw: Any) -> str:
    try:
        render_object = _DIALECTS[compiler.dialect.name]
    except KeyError as exc:
        raise NotImplementedError(
            f"no JSON rendering for {compiler.dialect.name}"
        ) from exc
    fields = []
    for field in element.fields:
        column = element.table.c[field]
        is_time = isinstance(column.type, UTCDateTime)
        fields.append((field, compiler.process(column, **kw), is_time))
    return render_object(fields)


def json_array(rows: Sequence[str]) -> orjson.Fragment:
    """The JSON rows as one JSON array, which orjson embeds as it is."""
    return orjson.Fragment("[" + ",".join(rows) + "]")


def parse_row(row: str) -> dict[str, Any]:
    """One JSON row as a dict."""
    parsed: dict[str, Any] = orjson.loads(row)
    return parsed
