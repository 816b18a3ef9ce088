"""The `/api/v1` router: every endpoint module of version 1."""

from fastapi import APIRouter

from app.api.v1.endpoints import admin, auth, items, users
from app.core.exceptions import COMMON_ERROR_RESPONSES

# Every route may answer these; routes add their own domain errors.
api_router = APIRouter(responses=COMMON_ERROR_RESPONSES)
api_router.include_router(auth.router)
api_router.include_router(users.router)
api_router.include_router(items.router)
api_router.include_router(admin.router)
