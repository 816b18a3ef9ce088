"""The User aggregate."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Index, String, false, true
from sqlalchemy.orm import Mapped, mapped_column, validates

from app.core.domain import display_name
from app.core.scopes import Role
from app.core.text import canonical_identity
from app.models.base import Base, TimestampMixin

ROLE_VALUES = ", ".join(f"'{role.value}'" for role in Role)


class User(TimestampMixin, Base):
    """An account.

    Email and username are kept as typed, for display; each is unique by its
    canonical form (NFKC + case folding, `canonical_identity`), held in its
    own column and set whenever the display value is, so fullwidth and case
    variants of one address or name are one account.
    """

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(50))
    email_canonical: Mapped[str] = mapped_column(String(255), unique=True)
    username_canonical: Mapped[str] = mapped_column(String(50), unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255))
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    desired_name: Mapped[str | None] = mapped_column(String(100))
    phone: Mapped[str | None] = mapped_column(String(20))
    age: Mapped[int | None]
    role: Mapped[str] = mapped_column(
        String(20), default=Role.USER.value, server_default=Role.USER.value
    )
    is_active: Mapped[bool] = mapped_column(default=True, server_default=true())
    is_verified: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Bumped when every outstanding access token must die (role change, deactivation).
    token_version: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        CheckConstraint("email LIKE '%@%.%'", name="email_format"),
        CheckConstraint("length(username) >= 3", name="username_length"),
        CheckConstraint(f"role IN ({ROLE_VALUES})", name="role_valid"),
        CheckConstraint("age IS NULL OR (age >= 18 AND age <= 120)", name="age_range"),
        Index("ix_users_role_is_active", "role", "is_active"),
    )

    @validates("email", "username")
    def _set_canonical(self, key: str, value: str) -> str:
        # Every path that sets an email or a username (signup, admin create,
        # the CLI, any later change) sets its canonical form with it.
        setattr(self, f"{key}_canonical", canonical_identity(value))
        return value

    @property
    def display_name(self) -> str:
        """The name to show: desired name, else first + last, else email (seed 002)."""
        return display_name(
            self.desired_name, self.first_name, self.last_name, self.email
        )
