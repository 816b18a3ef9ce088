"""Migrations are the only way the schema is made, and they make the models' schema."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app.models import Base


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection,
        opts={"compare_type": True, "render_as_batch": True},
    )
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_schema_equals_models(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        differences = await connection.run_sync(_diff)
    assert differences == []


async def test_constraints_have_stable_names(engine: AsyncEngine) -> None:
    def names(connection: Connection) -> set[str]:
        inspector = inspect(connection)
        found = {c["name"] for c in inspector.get_unique_constraints("users")}
        found |= {c["name"] for c in inspector.get_check_constraints("users")}
        return {name for name in found if name}

    async with engine.connect() as connection:
        found = await connection.run_sync(names)
    assert {
        "uq_users_email_canonical",
        "uq_users_username_canonical",
        "ck_users_email_format",
        "ck_users_role_valid",
        "ck_users_age_range",
    } <= found
