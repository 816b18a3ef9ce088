"""Schemas of the authentication routes."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.schemas.user import NormalisedEmail, Password, StrictInput


class LoginRequest(StrictInput):
    """The OAuth2 password grant, as a form or as JSON.

    `client_id` / `client_secret` are accepted (and ignored) because generic
    OAuth2 clients, Swagger's Authorize among them, send them.
    """

    grant_type: Literal["password"] | None = None
    username: str = Field(min_length=1, max_length=255, description="Email or username")
    password: str = Field(min_length=1, max_length=1024)
    scope: str | None = Field(default=None, max_length=1000)
    client_id: str | None = Field(default=None, max_length=255)
    client_secret: str | None = Field(default=None, max_length=255)
    use_cookie: bool = Field(
        default=False,
        description="Browser clients: set the refresh token as an httpOnly cookie "
        "instead of returning it in the body.",
    )


class RefreshRequest(StrictInput):
    """Refresh by body; browser clients send nothing here and use the cookie."""

    # An empty string is not "no token": it would send a cookie client's next
    # refresh token into the body, where the page's scripts can read it.
    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)


class TokenResponse(BaseModel):
    """RFC 6749 section 5.1 token response (top level, not in the envelope)."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - RFC 6749 token type
    expires_in: int
    refresh_token: str | None = None
    scope: str


class SessionPublic(BaseModel):
    """One active login session."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip_address: str | None
    scope: str
    current: bool = False


class Accepted(BaseModel):
    """A request taken for asynchronous processing (202)."""

    message: str


class EmailRequest(StrictInput):
    """Ask for an email (password reset)."""

    email: NormalisedEmail


class TokenConfirm(StrictInput):
    """A token from an emailed link."""

    token: str = Field(min_length=16, max_length=256)


class PasswordResetConfirm(TokenConfirm):
    """A reset token and the new password."""

    new_password: Password
    confirm_password: str = Field(max_length=128)

    @model_validator(mode="after")
    def _confirmed(self) -> Self:
        if self.new_password != self.confirm_password:
            raise ValueError("Passwords do not match")
        return self
