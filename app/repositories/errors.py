"""Translate database integrity errors into something services can reason about."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError


class UniqueViolationError(Exception):
    """A unique constraint rejected the write; `column` names the offending column."""

    def __init__(self, table: str, column: str) -> None:
        """Record which table and column clashed."""
        self.table = table
        self.column = column
        super().__init__(f"{table}.{column} must be unique")


def unique_violation(
    exc: IntegrityError, table: str, columns: tuple[str, ...]
) -> UniqueViolationError | None:
    """Find which of `columns` a unique-constraint failure is about.

    SQLite says `UNIQUE constraint failed: users.email`; PostgreSQL names the
    constraint (`uq_users_email`) thanks to the naming convention.

    Args:
        exc: The error raised by the flush.
        table: The table written to.
        columns: Candidate unique columns.

    Returns:
        The violation, or None when the error is something else.
    """
    text = str(exc.orig)
    for column in columns:
        if f"{table}.{column}" in text or f"uq_{table}_{column}" in text:
            return UniqueViolationError(table, column)
    return None
