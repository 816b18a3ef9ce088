"""Schemas of the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditFilters(BaseModel):
    """Filters of `GET /admin/audit`; None means "not filtered"."""

    actor_id: int | None = None
    entity_type: str | None = None
    entity_id: str | None = None
    action: str | None = None
    since: datetime | None = None
    until: datetime | None = None


class AuditEntryPublic(BaseModel):
    """One audit row as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    occurred_at: datetime
    actor_id: int | None
    actor_name: str | None
    action: str
    entity_type: str
    entity_id: str
    changed_fields: dict[str, Any]
    request_id: str | None
    client_ip: str | None
