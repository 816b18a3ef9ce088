"""Administration: the audit trail."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from app.api.deps import ReadSessionDep, require
from app.core.domain import MAX_ID
from app.core.exceptions import ERROR_RESPONSE
from app.core.principal import Principal
from app.core.scopes import ADMIN_ALL
from app.schemas.audit import AuditEntryPublic, AuditFilters
from app.schemas.envelope import Envelope, Page
from app.schemas.user import QueryText, QueryTime
from app.services import audit

router = APIRouter(prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {**ERROR_RESPONSE, "description": "Not authenticated"},
    403: {**ERROR_RESPONSE, "description": "Needs admin:all"},
}


@router.get("/audit", summary="Search the audit trail", responses=ERRORS)
async def list_audit(
    session: ReadSessionDep,
    principal: Annotated[Principal, require(ADMIN_ALL)],
    actor_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    entity_type: Annotated[QueryText | None, Query(max_length=50)] = None,
    entity_id: Annotated[QueryText | None, Query(max_length=64)] = None,
    action: Annotated[QueryText | None, Query(max_length=50)] = None,
    since: QueryTime | None = None,
    until: QueryTime | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Envelope[Page[AuditEntryPublic]]:
    """Audit rows, newest first, filtered by actor, entity, action and time."""
    filters = AuditFilters(
        actor_id=actor_id,
        entity_type=entity_type,
        entity_id=entity_id,
        action=action,
        since=since,
        until=until,
    )
    rows, total = await audit.search(session, filters, limit=limit, offset=offset)
    page: Page[AuditEntryPublic] = Page(
        items=[AuditEntryPublic.model_validate(row) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
    return Envelope(data=page)
