"""ORM models; importing this package registers every table on `Base.metadata`."""

from app.core.scopes import Role
from app.models.auth_session import AuthSession, RefreshToken
from app.models.base import Base
from app.models.user import User

__all__ = ["AuthSession", "Base", "RefreshToken", "Role", "User"]
