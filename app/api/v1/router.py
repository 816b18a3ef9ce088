"""Version 1 of the API: every endpoint module, included under `/api/v1`."""

from fastapi import FastAPI

from app.api.v1.endpoints import admin, auth, items, users
from app.core.exceptions import COMMON_ERROR_RESPONSES


def include_v1(app: FastAPI, prefix: str) -> None:
    """Mount the v1 routers directly on `app` (one level of routing, not two).

    Every route may answer the common errors; routes add their own.
    """
    # Routes are matched in order: the busiest (users/me, items) go first.
    for module in (users, items, auth, admin):
        app.include_router(
            module.router, prefix=prefix, responses=COMMON_ERROR_RESPONSES
        )
