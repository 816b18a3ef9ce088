"""JSON-lines logging with the request id on every record and secrets redacted."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The caller's address, for audit rows written deep in the service layer.
client_ip_var: ContextVar[str | None] = ContextVar("client_ip", default=None)


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """Which request, from which address: what an audit row records of its cause."""

    request_id: str | None
    client_ip: str | None

    @classmethod
    def current(cls) -> RequestOrigin:
        """The origin of the request being served (both None outside one)."""
        return cls(request_id_var.get(), client_ip_var.get())


# Keys whose values are never written to a log, wherever they appear in `extra`.
SENSITIVE_KEYS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "confirm_password",
        "hashed_password",
        "token",
        "access_token",
        "refresh_token",
        "authorization",
        "cookie",
        "set-cookie",
        "secret",
        "secret_key",
        "smtp_password",
    }
)
REDACTED = "[REDACTED]"
TRUSTED_LOGGERS = frozenset({"app.access"})
# A bearer token or a JWT pasted into a free-text message is masked too.
_TOKEN_PATTERN = re.compile(
    r"(Bearer\s+)[A-Za-z0-9._~+/=-]+|eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
)
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}


def redact(value: Any) -> Any:
    """Return `value` with every sensitive key's value replaced by a marker.

    Args:
        value: Any JSON-like structure (dicts, lists, scalars).

    Returns:
        A copy that is safe to log.
    """
    if isinstance(value, dict):
        return {
            key: REDACTED if str(key).lower() in SENSITIVE_KEYS else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item) for item in value]
    if isinstance(value, str):
        return _TOKEN_PATTERN.sub(_mask_token, value)
    return value


def _mask_token(match: re.Match[str]) -> str:
    prefix = match.group(1)
    return f"{prefix}{REDACTED}" if prefix else REDACTED


class JsonFormatter(logging.Formatter):
    """Render a record as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        """Format `record` as JSON, including its `extra` fields."""
        payload: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            payload["request_id"] = request_id
        fields = record.__dict__
        for key in fields.keys() - _RESERVED:
            if not key.startswith("_"):
                payload[key] = fields[key]
        if record.exc_info:
            payload["exception"] = "".join(traceback.format_exception(*record.exc_info))
        if record.name in TRUSTED_LOGGERS:
            # Built by our middleware from known-safe fields only (no headers,
            # bodies or query strings), so the redaction walk is skipped.
            return orjson.dumps(payload, default=str).decode()
        return orjson.dumps(redact(payload), default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as JSON; silence uvicorn's access log.

    Args:
        level: The root log level name.
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Our middleware writes one richer access line per request instead.
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
