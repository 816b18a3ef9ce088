"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.core.domain import ItemStatus
from app.core.scopes import Role
from app.models.audit import AuditLog
from app.models.auth_session import AuthSession, RefreshToken
from app.models.base import Base
from app.models.idempotency import IdempotencyKey
from app.models.item import Attachment, Item
from app.models.outbox import ActionToken, OutboxEvent, ProcessedEvent
from app.models.user import User

__all__ = [
    "ActionToken",
    "Attachment",
    "AuditLog",
    "AuthSession",
    "Base",
    "IdempotencyKey",
    "Item",
    "ItemStatus",
    "OutboxEvent",
    "ProcessedEvent",
    "RefreshToken",
    "Role",
    "User",
]
