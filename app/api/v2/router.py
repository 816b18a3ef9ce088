"""The `/api/v2` router."""

from fastapi import APIRouter

from app.api.v2.endpoints import items
from app.core.exceptions import COMMON_ERROR_RESPONSES

api_router = APIRouter(responses=COMMON_ERROR_RESPONSES)
api_router.include_router(items.router)
