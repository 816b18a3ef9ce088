"""Authentication routes: signup (login and tokens arrive with the identity work)."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import HasherDep, SessionDep
from app.core.exceptions import COMMON_ERROR_RESPONSES, ERROR_RESPONSE
from app.schemas.envelope import Envelope
from app.schemas.user import UserPublic, UserSignup
from app.services import accounts

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/signup",
    status_code=status.HTTP_201_CREATED,
    summary="Create an account",
    responses={
        **COMMON_ERROR_RESPONSES,
        409: {
            **ERROR_RESPONSE,
            "description": "EMAIL_ALREADY_REGISTERED or USERNAME_TAKEN",
        },
    },
)
async def signup(
    payload: UserSignup, session: SessionDep, hasher: HasherDep
) -> Envelope[UserPublic]:
    """Register a new account with the `user` role; it is committed before the 201."""
    user = await accounts.sign_up(session, hasher, payload)
    return Envelope(data=UserPublic.model_validate(user))
