"""Authentication routes: signup, login (OAuth2 password grant), refresh, sessions."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Body,
    Depends,
    Path,
    Request,
    Response,
    status,
)
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.deps import (
    AccountReader,
    AccountWriter,
    ClientDep,
    CurrentPrincipal,
    DatabaseDep,
    EmailThrottleDep,
    HasherDep,
    LoginGuardDep,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    limit_by_client_ip,
)
from app.core.config import Settings
from app.core.exceptions import (
    COMMON_ERROR_RESPONSES,
    ERROR_RESPONSE,
    CsrfError,
    InvalidRefreshTokenError,
    MalformedJsonError,
)
from app.core.tokens import csrf_token_for, same_secret
from app.schemas.auth import (
    Accepted,
    EmailRequest,
    LoginRequest,
    PasswordResetConfirm,
    RefreshRequest,
    SessionPublic,
    TokenConfirm,
    TokenResponse,
)
from app.schemas.envelope import Envelope
from app.schemas.user import UserPublic, UserSignup
from app.services import accounts, auth, email_actions
from app.services.auth import TokenPair

router = APIRouter(
    prefix="/auth",
    tags=["auth"],
    dependencies=[Depends(limit_by_client_ip)],
    responses={
        429: {**ERROR_RESPONSE, "description": "RATE_LIMITED (see Retry-After)"}
    },
)

AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERROR_RESPONSES,
    401: {**ERROR_RESPONSE, "description": "Missing, invalid or revoked credentials"},
}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


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


async def _read_login_request(request: Request) -> LoginRequest:
    """Parse the password grant from a form (OAuth2, Swagger) or from JSON."""
    content_type = request.headers.get("content-type", "")
    data: Any
    if content_type.startswith("application/json"):
        try:
            data = json.loads(await request.body())
        except ValueError as exc:
            raise MalformedJsonError from exc
    else:
        form = await request.form()
        data = {key: value for key, value in form.items() if isinstance(value, str)}
    try:
        return LoginRequest.model_validate(data)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc


def _login_body_schema() -> dict[str, Any]:
    schema = LoginRequest.model_json_schema()
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {"schema": schema},
                "application/json": {"schema": schema},
            },
        }
    }


def _set_refresh_cookies(response: Response, settings: Settings, token: str) -> None:
    path = f"{settings.API_V1_STR}/auth"
    response.set_cookie(
        settings.REFRESH_COOKIE_NAME,
        token,
        max_age=settings.REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS * 86400,
        path=path,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    # Readable by the page's script, which echoes it in the CSRF header.
    response.set_cookie(
        settings.CSRF_COOKIE_NAME,
        csrf_token_for(settings, token),
        max_age=settings.REFRESH_TOKEN_ABSOLUTE_LIFETIME_DAYS * 86400,
        path="/",
        secure=True,
        httponly=False,
        samesite="strict",
    )


def _clear_refresh_cookies(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        settings.REFRESH_COOKIE_NAME,
        path=f"{settings.API_V1_STR}/auth",
        secure=True,
        httponly=True,
        samesite="strict",
    )
    response.delete_cookie(
        settings.CSRF_COOKIE_NAME, path="/", secure=True, samesite="strict"
    )


def _token_response(
    pair: TokenPair, response: Response, settings: Settings, *, cookie: bool
) -> TokenResponse:
    response.headers.update(NO_STORE)
    if cookie:
        _set_refresh_cookies(response, settings, pair.refresh_token)
    return TokenResponse(
        access_token=pair.access.token,
        expires_in=pair.access.expires_in,
        refresh_token=None if cookie else pair.refresh_token,
        scope=pair.scope,
    )


@router.post(
    "/login",
    summary="Log in (OAuth2 password grant, first-party clients only)",
    response_model_exclude_none=True,
    openapi_extra=_login_body_schema(),
    responses={
        **AUTH_ERRORS,
        400: {**ERROR_RESPONSE, "description": "INVALID_SCOPE or MALFORMED_JSON"},
        403: {**ERROR_RESPONSE, "description": "ACCOUNT_DISABLED"},
        429: {**ERROR_RESPONSE, "description": "ACCOUNT_LOCKED (see Retry-After)"},
    },
)
async def login(
    request: Request,
    response: Response,
    database: DatabaseDep,
    settings: SettingsDep,
    hasher: HasherDep,
    guard: LoginGuardDep,
    client: ClientDep,
) -> TokenResponse:
    """Exchange a login (email or username) and password for tokens.

    The answer is the RFC 6749 token response at the top level (not the
    envelope), with `Cache-Control: no-store`. With `use_cookie`, the refresh
    token goes into an httpOnly cookie instead of the body.
    """
    credentials = await _read_login_request(request)
    pair = await auth.login(
        database,
        settings,
        hasher,
        guard,
        identifier=credentials.username,
        password=credentials.password,
        requested_scope=credentials.scope,
        client=client,
    )
    return _token_response(pair, response, settings, cookie=credentials.use_cookie)


def _refresh_token_from_cookie(request: Request, settings: Settings) -> str:
    token = request.cookies.get(settings.REFRESH_COOKIE_NAME)
    if not token:
        raise InvalidRefreshTokenError("No refresh token was sent")
    header = request.headers.get(settings.CSRF_HEADER_NAME, "")
    cookie = request.cookies.get(settings.CSRF_COOKIE_NAME, "")
    expected = csrf_token_for(settings, token)
    if not (header and same_secret(header, cookie) and same_secret(header, expected)):
        raise CsrfError
    return token


@router.post(
    "/refresh",
    summary="Rotate a refresh token",
    response_model_exclude_none=True,
    responses={
        **AUTH_ERRORS,
        401: {
            **ERROR_RESPONSE,
            "description": "INVALID_REFRESH_TOKEN, or TOKEN_REUSED (family revoked)",
        },
        403: {**ERROR_RESPONSE, "description": "CSRF_FAILED (cookie mode)"},
    },
)
async def refresh(
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    payload: Annotated[RefreshRequest | None, Body()] = None,
) -> TokenResponse:
    """Trade a refresh token for a new pair; the old one stops working.

    Send it in the body, or (browser clients) rely on the httpOnly cookie and
    echo the `csrf_token` cookie in the `X-CSRF-Token` header.
    """
    # One decision for both where the token comes from and where the next goes:
    # a token read from the cookie is only ever answered with a cookie.
    token = payload.refresh_token if payload else None
    from_cookie = token is None
    if token is None:
        token = _refresh_token_from_cookie(request, settings)
    pair = await auth.refresh(session, settings, token)
    return _token_response(pair, response, settings, cookie=from_cookie)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out of this session",
    responses=AUTH_ERRORS,
)
async def logout(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> None:
    """Revoke the current session: its refresh and access tokens stop working."""
    await auth.logout(session, principal)
    _clear_refresh_cookies(response, settings)


@router.post(
    "/logout-all",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out everywhere",
    responses=AUTH_ERRORS,
)
async def logout_all(
    principal: AccountWriter,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
) -> None:
    """Revoke every session and every access token of the caller."""
    await auth.logout_everywhere(session, principal)
    _clear_refresh_cookies(response, settings)


@router.get("/sessions", summary="My active sessions", responses=AUTH_ERRORS)
async def list_sessions(
    principal: AccountReader, session: ReadSessionDep, settings: SettingsDep
) -> Envelope[list[SessionPublic]]:
    """Sessions that can still refresh, most recently used first."""
    families = await auth.list_sessions(session, settings, principal)
    return Envelope(
        data=[
            SessionPublic.model_validate(family).model_copy(
                update={"current": family.id == principal.session_id}
            )
            for family in families
        ]
    )


# Session ids are uuid4 hex: anything else (a NUL byte was a 500 on
# PostgreSQL) is bad input, not a lookup.
SessionId = Annotated[str, Path(pattern="^[0-9a-f]{32}$")]


@router.delete(
    "/sessions/{session_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke one of my sessions",
    responses={
        **AUTH_ERRORS,
        404: {**ERROR_RESPONSE, "description": "No such session"},
    },
)
async def revoke_session(
    session_id: SessionId, principal: AccountWriter, session: SessionDep
) -> None:
    """Revoke a session of the caller's (e.g. a lost device)."""
    await auth.revoke_session(session, principal, session_id)


@router.post(
    "/verify-email/request",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Email me a verification link",
    responses=AUTH_ERRORS,
)
async def request_email_verification(
    principal: AccountWriter, session: SessionDep, throttle: EmailThrottleDep
) -> Envelope[Accepted]:
    """Queue a verification email (not when already verified, nor past the limit)."""
    await email_actions.request_verification(session, throttle, principal)
    return Envelope(
        data=Accepted(message="If your email needs verifying, a link is on its way")
    )


@router.post(
    "/verify-email/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Confirm an email address",
    responses={400: {**ERROR_RESPONSE, "description": "INVALID_OR_EXPIRED_TOKEN"}},
)
async def confirm_email_verification(
    payload: TokenConfirm, session: SessionDep
) -> None:
    """Mark the account verified; each token works once, until it expires."""
    await email_actions.confirm_verification(session, payload.token)


@router.post(
    "/password-reset/request",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Email me a password reset link",
)
async def request_password_reset(
    payload: EmailRequest,
    database: DatabaseDep,
    throttle: EmailThrottleDep,
    background: BackgroundTasks,
) -> Envelope[Accepted]:
    """Always 202: neither the answer nor its timing tells whether an account exists.

    The lookup (and, for a known account, the write) runs after the answer.
    At most `PASSWORD_RESET_EMAIL_LIMIT` emails go to one account.
    """
    background.add_task(
        email_actions.request_password_reset_after_answer,
        database.sessionmaker,
        throttle,
        payload.email,
    )
    return Envelope(
        data=Accepted(
            message="If an account uses this email, a reset link is on its way"
        )
    )


@router.post(
    "/password-reset/confirm",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set a new password with a reset token",
    responses={400: {**ERROR_RESPONSE, "description": "INVALID_OR_EXPIRED_TOKEN"}},
)
async def confirm_password_reset(
    payload: PasswordResetConfirm,
    session: SessionDep,
    hasher: HasherDep,
    guard: LoginGuardDep,
) -> None:
    """Set the new password; every session of the account is revoked."""
    await email_actions.confirm_password_reset(
        session, hasher, guard, payload.token, payload.new_password
    )
