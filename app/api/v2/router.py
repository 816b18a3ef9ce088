"""Version 2 of the API, included under `/api/v2`."""

from fastapi import FastAPI

from app.api.v2.endpoints import items
from app.core.exceptions import COMMON_ERROR_RESPONSES


def include_v2(app: FastAPI, prefix: str) -> None:
    """Mount the v2 routers directly on `app`."""
    app.include_router(items.router, prefix=prefix, responses=COMMON_ERROR_RESPONSES)
