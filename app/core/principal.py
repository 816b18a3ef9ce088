"""The authenticated caller, as routes and services see it."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.domain import display_name


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, with what rights. `sub` was converted to `user_id` once."""

    user_id: int
    email: str
    role: str
    scopes: frozenset[str]
    first_name: str
    last_name: str
    desired_name: str | None
    session_id: str | None

    @property
    def display_name(self) -> str:
        """Desired name, else first + last, else email (seed 002)."""
        return display_name(
            self.desired_name, self.first_name, self.last_name, self.email
        )

    def has(self, scope: str) -> bool:
        """Whether the token grants `scope`."""
        return scope in self.scopes
