"""Pure ASGI middleware: request id, access log, security headers, last-resort 500/503."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.exceptions import error_response
from app.core.logging import client_ip_var, request_id_var
from app.core.unavailable import (
    RETRY_AFTER_SECONDS,
    database_unavailable,
    outcome_unknown,
)

access_logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")

REQUEST_ID_HEADER = "x-request-id"
# A client-supplied id is echoed only when it cannot smuggle anything into logs.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

API_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Swagger UI and ReDoc run inline bootstrap scripts and load their bundles from us.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "worker-src 'self' blob:; frame-ancestors 'none'"
)
DOCS_PATH_PREFIXES = ("/docs", "/redoc")
TOO_LARGE_MESSAGE = "The request body is too large"
RATE_LIMIT_STATE = "rate_limit_headers"
"""Request-state key of the `RateLimit-*` headers the response must carry."""


def _pick_request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(candidate):
                return candidate
            break
    return uuid.uuid4().hex


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _client_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


class RequestContextMiddleware:
    """Give each request an id, log one access line, and never leak a traceback."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        large_bodies: Sequence[tuple[re.Pattern[str], int]] = (),
        hsts: bool = False,
    ) -> None:
        """Wrap `app`.

        Args:
            app: The inner ASGI application.
            max_body_bytes: Larger bodies get 413 (declared or streamed).
            large_bodies: Paths (regex) allowed a different limit, e.g. uploads.
            hsts: Add `Strict-Transport-Security` (production behind TLS).
        """
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.large_bodies = list(large_bodies)
        self.security_headers = dict(API_SECURITY_HEADERS)
        if hsts:
            self.security_headers["Strict-Transport-Security"] = (
                "max-age=63072000; includeSubDomains"
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _pick_request_id(scope)
        token = request_id_var.set(request_id)
        ip_token = client_ip_var.set(_client_ip(scope))
        scope.setdefault("state", {})
        started = time.perf_counter()
        status_holder: dict[str, int] = {"status": 500}
        is_docs = scope["path"].startswith(DOCS_PATH_PREFIXES)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                self._add_headers(message, scope, request_id, is_docs=is_docs)
                status_holder["started"] = 1
            await send(message)

        try:
            limit = self._limit_for(scope["path"])
            declared = _content_length(scope)
            if declared is not None and declared > limit:
                response = _too_large_response()
                await response(scope, receive, send_with_headers)
            else:
                await self.app(scope, self._limited(receive, limit), send_with_headers)
        except Exception as exc:
            response = _failure_response(exc, scope["path"])
            if "started" not in status_holder:
                await response(scope, receive, send_with_headers)
        finally:
            self._log_access(scope, status_holder["status"], started)
            request_id_var.reset(token)
            client_ip_var.reset(ip_token)

    def _add_headers(
        self, message: Message, scope: Scope, request_id: str, *, is_docs: bool
    ) -> None:
        headers = MutableHeaders(scope=message)
        headers["X-Request-ID"] = request_id
        for name, value in self.security_headers.items():
            headers.setdefault(name, value)
        if is_docs:
            headers["Content-Security-Policy"] = DOCS_CSP
        # Set by the rate limiter (app/api/deps.py) when a limit applied.
        for name, value in scope["state"].get(RATE_LIMIT_STATE, {}).items():
            headers.setdefault(name, value)

    def _limit_for(self, path: str) -> int:
        for pattern, limit in self.large_bodies:
            if pattern.match(path):
                return limit
        return self.max_body_bytes

    @staticmethod
    def _limited(receive: Receive, limit: int) -> Receive:
        """Count body bytes as they arrive; a chunked body cannot dodge the limit."""
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, TOO_LARGE_MESSAGE)
            return message

        return limited_receive

    @staticmethod
    def _log_access(scope: Scope, status: int, started: float) -> None:
        state: dict[str, Any] = scope.get("state", {})
        elapsed = time.perf_counter() - started
        template = route_template(scope)
        access_logger.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "route": template,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "client_ip": _client_ip(scope),
                "user_id": state.get("user_id"),
            },
        )
        label = template or "unmatched"  # never raw paths: unbounded label values
        metrics.REQUESTS.labels(scope["method"], label, str(status)).inc()
        metrics.REQUEST_SECONDS.labels(scope["method"], label).observe(elapsed)


def route_template(scope: Scope) -> str | None:
    """The matched route's template with its mount prefix, e.g. `/api/v1/items/{item_id}`.

    FastAPI reports the route as declared in its router (without the prefix it
    was included under), so the prefix is recovered from the request path.
    """
    route = scope.get("route")
    template: str | None = getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if template is None or regex is None:
        return template
    path: str = scope["path"]
    if regex.match(path):
        return template
    for index, char in enumerate(path):
        if char == "/" and index and regex.match(path[index:]):
            return path[:index] + template
    return template


def _failure_response(exc: Exception, path: str) -> Any:
    """503 when the database is down or busy (retry later), else a generic 500.

    An outage is logged as one warning line per request, not a traceback:
    it is the database's state, not a bug here.
    """
    if outcome_unknown(exc):
        error_logger.exception("outcome unknown", extra={"path": path})
        return error_response(
            500,
            "OUTCOME_UNKNOWN",
            "The database failed while saving; the change may have been made. "
            "Check before repeating it (or repeat it with the same Idempotency-Key)",
        )
    if database_unavailable(exc):
        reason = str(exc).strip().partition("\n")[0]
        error_logger.warning(
            "database unavailable",
            extra={"path": path, "error": f"{type(exc).__name__}: {reason}"},
        )
        return error_response(
            503,
            "SERVICE_UNAVAILABLE",
            "The database is unavailable or busy; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    error_logger.exception("unhandled exception", extra={"path": path})
    return error_response(500, "INTERNAL_ERROR", "An unexpected error occurred")


def _too_large_response() -> Any:
    return error_response(413, "PAYLOAD_TOO_LARGE", TOO_LARGE_MESSAGE)


class HeadAsGetMiddleware:
    """Answer `HEAD` wherever `GET` is answered, with the headers and no body.

    RFC 9110 section 9.3.2; probes and uptime checkers use HEAD. Starlette's
    routes add HEAD to GET by themselves, FastAPI's do not (405 before this).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        # Routed as GET in a copy: the server reads the method from its own
        # scope to send no body. The access log and the metrics (outside this
        # middleware) are given the matched route and keep the real method.
        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, send_headers_only)
        finally:
            if "route" in as_get:
                scope["route"] = as_get["route"]
