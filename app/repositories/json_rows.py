"""Rows rendered as JSON objects by the database itself, for list pages.

A page of 100 items read as typed columns costs 1,200 Python values, 200
datetime parses and 100 dicts before orjson turns them back into text; that
was most of a list request's CPU. Here SQLite (`json_object`) or PostgreSQL
(`json_build_object`) writes each row as one JSON string, in the API's field
order and formats (timestamps as ISO 8601 UTC with `Z`, microseconds only when
not zero, exactly as pydantic and orjson write them elsewhere). SQLite's text
is compact, so a page goes into the response as it is, never parsed;
PostgreSQL's has spaces after colons, so orjson re-reads it (one C call).

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


_DIALECTS: dict[str, tuple[str, str, Callable[[str], str]]] = {
    # dialect: (function, suffix, timestamp rendering)
    "sqlite": ("json_object", "", _sqlite_time),
    "postgresql": ("json_build_object", "::text", _postgresql_time),
}
# Dialects whose JSON text is already what orjson would write (no spaces).
_COMPACT = frozenset({"sqlite"})


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
        function, suffix, render_time = _DIALECTS[compiler.dialect.name]
    except KeyError as exc:
        raise NotImplementedError(
            f"no JSON rendering for {compiler.dialect.name}"
        ) from exc
    pairs = []
    for field in element.fields:
        column = element.table.c[field]
        sql = compiler.process(column, **kw)
        if isinstance(column.type, UTCDateTime):
            sql = render_time(sql)
        pairs.append(f"'{field}', {sql}")
    return f"{function}({', '.join(pairs)}){suffix}"


def json_array(rows: Sequence[str], dialect: str) -> orjson.Fragment | list[Any]:
    """The JSON rows as one JSON array, for `orjson.dumps`.

    Args:
        rows: Texts of `JsonRow` columns.
        dialect: The database that wrote them (`sqlite`, `postgresql`).

    Returns:
        The array as a fragment orjson embeds as is, when the database wrote
        compact JSON; else the parsed rows (orjson writes them compactly).
    """
    array = "[" + ",".join(rows) + "]"
    if dialect in _COMPACT:
        return orjson.Fragment(array)
    parsed: list[Any] = orjson.loads(array)
    return parsed


def parse_row(row: str) -> dict[str, Any]:
    """One JSON row as a dict."""
    parsed: dict[str, Any] = orjson.loads(row)
    return parsed
