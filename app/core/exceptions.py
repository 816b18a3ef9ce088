"""The `AppError` hierarchy and the handlers that render every error as the envelope."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.logging import request_id_var
from app.core.responses import FastJSONResponse
from app.schemas.envelope import ErrorEnvelope

logger = logging.getLogger("app.errors")

# Codes for errors Starlette raises itself (unknown route, wrong method, ...).
HTTP_STATUS_CODES: dict[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "PRECONDITION_FAILED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class DependencyUnavailableError(Exception):
    """Something outside the process (Redis, the mail server) is down for now.

    Work that fails with it is retried later without counting it as a failed
    attempt: an outage must not use up an event's deliveries and drop it.
    """


class AppError(Exception):
    """Base of every domain error: a status code, a stable code and a message."""

    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "BAD_REQUEST"
    message: ClassVar[str] = "The request could not be processed"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Sequence[Mapping[str, Any]] = (),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.detail_message = message or self.message
        self.details = [dict(item) for item in details]
        self.headers = dict(headers or {})
        super().__init__(self.detail_message)


class MalformedJsonError(AppError):
    """The body claims to be JSON but does not parse."""

    status_code = 400
    code = "MALFORMED_JSON"
    message = "The request body is not valid JSON"


class NotFoundError(AppError):
    """The resource does not exist (or the caller may not know it does)."""

    status_code = 404
    code = "NOT_FOUND"
    message = "Resource not found"


class ConflictError(AppError):
    """The change contradicts data already stored."""

    status_code = 409
    code = "CONFLICT"
    message = "The resource conflicts with existing data"


class EmailAlreadyRegisteredError(ConflictError):
    """Another account already uses this email address."""

    code = "EMAIL_ALREADY_REGISTERED"
    message = "An account with this email address already exists"


class UsernameTakenError(ConflictError):
    """Another account already uses this username."""

    code = "USERNAME_TAKEN"
    message = "This username is already taken"


class UnauthorizedError(AppError):
    """No valid credentials: the client must authenticate (RFC 6750)."""

    status_code = 401
    code = "UNAUTHORIZED"
    message = "Not authenticated"


class InvalidCredentialsError(AppError):
    """Wrong login or password (deliberately not saying which)."""

    status_code = 401
    code = "INVALID_CREDENTIALS"
    message = "Incorrect login or password"

    def __init__(self) -> None:
        super().__init__(headers={"WWW-Authenticate": "Bearer"})


def bearer_challenge(error: str | None = None, **params: str) -> str:
    """Build a `WWW-Authenticate: Bearer ...` value (RFC 6750 section 3)."""
    parts = [f'error="{error}"'] if error else []
    parts += [f'{key}="{value}"' for key, value in params.items()]
    return "Bearer " + ", ".join(parts) if parts else "Bearer"


class InvalidTokenError(UnauthorizedError):
    """The bearer token is missing, malformed, expired or revoked."""

    code = "INVALID_TOKEN"
    message = "The access token is invalid or expired"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message, headers={"WWW-Authenticate": bearer_challenge("invalid_token")}
        )


class NotAuthenticatedError(UnauthorizedError):
    """No credentials were sent at all."""

    def __init__(self) -> None:
        super().__init__(headers={"WWW-Authenticate": bearer_challenge()})


class InvalidRefreshTokenError(UnauthorizedError):
    """The refresh token is unknown, expired or its session was revoked."""

    code = "INVALID_REFRESH_TOKEN"
    message = "The refresh token is invalid or expired"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message, headers={"WWW-Authenticate": bearer_challenge("invalid_token")}
        )


class TokenReusedError(InvalidRefreshTokenError):
    """An already-rotated refresh token came back: its family is now revoked."""

    code = "TOKEN_REUSED"
    message = "Refresh token reuse detected; the session has been revoked"


class ForbiddenError(AppError):
    """Authenticated, but not allowed to do this."""

    status_code = 403
    code = "FORBIDDEN"
    message = "Not enough permissions"


class InsufficientScopeError(ForbiddenError):
    """A valid token without a scope the route needs (RFC 6750 section 3.1)."""

    code = "INSUFFICIENT_SCOPE"
    message = "The access token lacks a required scope"

    def __init__(self, required: str) -> None:
        super().__init__(
            details=[{"field": "scope", "message": f"requires {required}"}],
            headers={
                "WWW-Authenticate": bearer_challenge(
                    "insufficient_scope", scope=required
                )
            },
        )


class AccountDisabledError(ForbiddenError):
    """The credentials are right but the account is deactivated."""

    code = "ACCOUNT_DISABLED"
    message = "This account is disabled"


class CsrfError(ForbiddenError):
    """A cookie-authenticated request without the matching CSRF header."""

    code = "CSRF_FAILED"
    message = "Missing or invalid CSRF token"


class InvalidScopeError(AppError):
    """None of the requested scopes can be granted."""

    status_code = 400
    code = "INVALID_SCOPE"
    message = "None of the requested scopes can be granted"


class TooManyRequestsError(AppError):
    """Throttled; `Retry-After` says when to come back."""

    status_code = 429
    code = "RATE_LIMITED"
    message = "Too many requests"

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, retry_after))})
        self.retry_after = max(1, retry_after)


class RateLimitedError(TooManyRequestsError):
    """Over a rate limit; carries the `RateLimit-*` headers."""

    def __init__(self, retry_after: int, *, headers: Mapping[str, str]) -> None:
        super().__init__(retry_after)
        self.headers.update(headers)


class AccountLockedError(TooManyRequestsError):
    """Too many failed logins for this account: locked for a while."""

    code = "ACCOUNT_LOCKED"
    message = "Too many failed login attempts; try again later"


class PreconditionFailedError(AppError):
    """`If-Match` names a version that is no longer current."""

    status_code = 412
    code = "PRECONDITION_FAILED"
    message = "The resource was modified since you read it; fetch it again"


class PayloadTooLargeError(AppError):
    """An upload is over its size limit."""

    status_code = 413
    code = "PAYLOAD_TOO_LARGE"
    message = "The file is too large"


class UnsupportedMediaTypeError(AppError):
    """The content is not of an accepted type."""

    status_code = 415
    code = "UNSUPPORTED_MEDIA_TYPE"
    message = "This type of content is not accepted"


class ServiceUnavailableError(AppError):
    """A dependency the request needs is down."""

    status_code = 503
    code = "SERVICE_UNAVAILABLE"
    message = "The service is temporarily unavailable"


def error_response(
    status_code: int,
    code: str,
    message: str,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> FastJSONResponse:
    """Build the error envelope response.

    Args:
        status_code: HTTP status.
        code: Stable machine-readable error code.
        message: Human-readable summary.
        details: Per-field problems.
        headers: Extra response headers (e.g. `WWW-Authenticate`).

    Returns:
        The JSON response.
    """
    body = {
        "status": "error",
        "error": {
            "code": code,
            "message": message,
            "details": list(details),
            "request_id": request_id_var.get(),
        },
    }
    return FastJSONResponse(body, status_code=status_code, headers=headers)


def _field_path(location: Sequence[Any]) -> str:
    return ".".join(str(part) for part in location)


def _validation_details(exc: RequestValidationError) -> list[dict[str, str]]:
    details = []
    for error in exc.errors():
        message = str(error.get("msg", "Invalid value"))
        details.append({"field": _field_path(error.get("loc", ())), "message": message})
    return details


async def handle_app_error(request: Request, exc: Exception) -> FastJSONResponse:
    """Render an `AppError` subclass."""
    assert isinstance(exc, AppError)
    return error_response(
        exc.status_code, exc.code, exc.detail_message, exc.details, exc.headers
    )


async def handle_validation_error(request: Request, exc: Exception) -> FastJSONResponse:
    """Render a request validation failure: 400 for unparsable JSON, else 422."""
    assert isinstance(exc, RequestValidationError)
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return error_response(
            400, "MALFORMED_JSON", "The request body is not valid JSON"
        )
    return error_response(
        422, "VALIDATION_ERROR", "Invalid input", _validation_details(exc)
    )


async def handle_http_exception(request: Request, exc: Exception) -> FastJSONResponse:
    """Render Starlette's own errors (404, 405, 413, ...) in the envelope."""
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_STATUS_CODES.get(exc.status_code, "HTTP_ERROR")
    try:
        default_message = HTTPStatus(exc.status_code).phrase
    except ValueError:
        default_message = "HTTP error"
    message = exc.detail if isinstance(exc.detail, str) else default_message
    return error_response(exc.status_code, code, message, headers=exc.headers)


def register_exception_handlers(app: FastAPI) -> None:
    """Install the handlers that turn every error into the envelope.

    Unexpected exceptions are caught by the request-context middleware, which
    logs the traceback with the request id and answers a generic 500.

    Args:
        app: The application.
    """
    app.add_exception_handler(AppError, handle_app_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)


# Responses every route may answer; routes add their own domain errors.
ERROR_RESPONSE: dict[str, Any] = {"model": ErrorEnvelope}
COMMON_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**ERROR_RESPONSE, "description": "MALFORMED_JSON or BAD_REQUEST"},
    413: {**ERROR_RESPONSE, "description": "PAYLOAD_TOO_LARGE"},
    422: {**ERROR_RESPONSE, "description": "VALIDATION_ERROR"},
    500: {**ERROR_RESPONSE, "description": "INTERNAL_ERROR"},
    503: {
        **ERROR_RESPONSE,
        "description": "SERVICE_UNAVAILABLE: the database is down or busy "
        "(with `Retry-After`)",
    },
}
