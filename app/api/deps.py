"""Dependencies shared by the routes, as `Annotated` aliases."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.security import PasswordHasher
from app.database import Database


def get_settings_from_app(request: Request) -> Settings:
    """The settings the application was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    """The application's database (engine + session factory)."""
    database: Database = request.app.state.database
    return database


def get_password_hasher(request: Request) -> PasswordHasher:
    """The application's password hasher."""
    hasher: PasswordHasher = request.app.state.password_hasher
    return hasher


async def get_session(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    """One session per request; closing it rolls back anything not committed."""
    async with database.sessionmaker() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings_from_app)]
DatabaseDep = Annotated[Database, Depends(get_database)]
HasherDep = Annotated[PasswordHasher, Depends(get_password_hasher)]
# scope="function": the session closes when the route returns, before the response
# is sent; services have committed by then (ARCHITECTURE.md, request flow step 3).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
