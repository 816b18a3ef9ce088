"""Users: my profile and password, and the users API for moderators and admins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status

from app.api.deps import (
    AccountReader,
    AccountWriter,
    ClientDep,
    CurrentPrincipal,
    HasherDep,
    LoginGuardDep,
    ReadSessionDep,
    ResourceId,
    SessionDep,
    StorageDep,
    require,
)
from app.core.exceptions import COMMON_ERROR_RESPONSES, ERROR_RESPONSE
from app.core.principal import Principal
from app.core.scopes import USERS_DELETE, USERS_READ, USERS_WRITE, Role
from app.schemas.envelope import Envelope, Page
from app.schemas.user import (
    PasswordChange,
    ProfileUpdate,
    QueryText,
    UserCreateByAdmin,
    UserFilters,
    UserPublic,
    UserUpdate,
)
from app.services import users

router = APIRouter(prefix="/users", tags=["users"])

ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERROR_RESPONSES,
    401: {**ERROR_RESPONSE, "description": "Not authenticated"},
    403: {**ERROR_RESPONSE, "description": "Missing scope or forbidden field"},
    404: {**ERROR_RESPONSE, "description": "User not found"},
}


@router.get("/me", summary="My account", responses=ERRORS)
async def read_me(principal: AccountReader, request: Request) -> Envelope[UserPublic]:
    """The caller's own account (no database query when the cache is warm)."""
    state = request.app.state
    profile = await users.profile(
        state.auth_cache, state.database.sessionmaker, principal
    )
    return Envelope(data=profile)


@router.patch("/me", summary="Update my profile", responses=ERRORS)
async def update_me(
    payload: ProfileUpdate, principal: AccountWriter, session: SessionDep
) -> Envelope[UserPublic]:
    """Change my profile; role and status fields are not accepted here (422)."""
    user = await users.update_profile(session, principal, payload)
    return Envelope(data=UserPublic.model_validate(user))


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change my password",
    responses={
        **ERRORS,
        400: {**ERROR_RESPONSE, "description": "INVALID_CURRENT_PASSWORD"},
        429: {**ERROR_RESPONSE, "description": "ACCOUNT_LOCKED"},
    },
)
async def change_password(
    payload: PasswordChange,
    principal: AccountWriter,
    session: SessionDep,
    hasher: HasherDep,
    guard: LoginGuardDep,
    client: ClientDep,
) -> None:
    """Set a new password (current one required); every other session is revoked."""
    await users.change_password(session, hasher, guard, principal, payload, client.ip)


@router.get("", summary="List users", responses=ERRORS)
async def list_users(
    session: ReadSessionDep,
    principal: Annotated[Principal, require(USERS_READ)],
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    role: Role | None = None,
    is_active: bool | None = None,
    q: Annotated[
        QueryText | None,
        Query(min_length=1, max_length=100, description="Email or name prefix"),
    ] = None,
) -> Envelope[Page[UserPublic]]:
    """Users ordered by id, filtered by role / status / prefix of email or name."""
    found, total = await users.search_users(
        session,
        UserFilters(role=role, is_active=is_active, search=q),
        limit=limit,
        offset=offset,
    )
    page: Page[UserPublic] = Page(
        items=[UserPublic.model_validate(user) for user in found],
        total=total,
        limit=limit,
        offset=offset,
    )
    return Envelope(data=page)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a user (admin)",
    responses={**ERRORS, 409: {**ERROR_RESPONSE, "description": "Duplicate"}},
)
async def create_user(
    payload: UserCreateByAdmin,
    session: SessionDep,
    hasher: HasherDep,
    principal: Annotated[Principal, require(USERS_WRITE)],
) -> Envelope[UserPublic]:
    """Create an account with a chosen role and status."""
    user = await users.create_user(session, hasher, payload, principal)
    return Envelope(data=UserPublic.model_validate(user))


@router.get("/{user_id}", summary="Read a user", responses=ERRORS)
async def read_user(
    user_id: ResourceId, principal: CurrentPrincipal, session: ReadSessionDep
) -> Envelope[UserPublic]:
    """Yourself, or anyone with `users:read`; others are 404."""
    user = await users.get_user(session, principal, user_id)
    return Envelope(data=UserPublic.model_validate(user))


@router.patch(
    "/{user_id}",
    summary="Update a user",
    responses={
        **ERRORS,
        409: {**ERROR_RESPONSE, "description": "Would end the last active admin"},
    },
)
async def update_user(
    user_id: ResourceId,
    payload: UserUpdate,
    principal: CurrentPrincipal,
    session: SessionDep,
) -> Envelope[UserPublic]:
    """Owners change profile fields; admins (`users:write`) also role and status."""
    user = await users.update_user(session, principal, user_id, payload)
    return Envelope(data=UserPublic.model_validate(user))


@router.delete(
    "/{user_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Deactivate (or hard-delete) a user",
    responses={
        **ERRORS,
        409: {
            **ERROR_RESPONSE,
            "description": "Deleting yourself, or the last active admin",
        },
    },
)
async def delete_user(
    user_id: ResourceId,
    session: SessionDep,
    principal: Annotated[Principal, require(USERS_DELETE)],
    storage: StorageDep,
    hard: Annotated[
        bool, Query(description="Delete the row (needs admin:all)")
    ] = False,
) -> None:
    """Deactivate and revoke sessions; `hard=true` deletes the row, items, files."""
    await users.delete_user(session, principal, storage, user_id, hard=hard)
