"""Redaction and JSON formatting of log records."""

from __future__ import annotations

import logging

import orjson

from app.core.logging import REDACTED, JsonFormatter, redact, request_id_var


def test_redact_replaces_sensitive_keys_at_any_depth() -> None:
    value = {
        "user": {"email": "a@example.com", "Password": "p"},
        "headers": [{"authorization": "Bearer abc"}, {"accept": "json"}],
        "refresh_token": "r",
    }
    assert redact(value) == {
        "user": {"email": "a@example.com", "Password": REDACTED},
        "headers": [{"authorization": REDACTED}, {"accept": "json"}],
        "refresh_token": REDACTED,
    }


def test_redact_masks_tokens_inside_free_text() -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature"
    text = redact(f"header was Bearer abc.def-123 and {jwt} done")
    assert "abc.def-123" not in text
    assert jwt not in text
    assert text.startswith(f"header was Bearer {REDACTED} and {REDACTED}")


def test_formatter_writes_json_with_request_id_and_extra() -> None:
    record = logging.makeLogRecord(
        {
            "name": "t",
            "levelname": "INFO",
            "msg": "hello %s",
            "args": ("x",),
            "user_id": 7,
            "password": "hunter2",
        }
    )
    token = request_id_var.set("rid-1")
    try:
        line = JsonFormatter().format(record)
    finally:
        request_id_var.reset(token)
    payload = orjson.loads(line)
    assert payload["message"] == "hello x"
    assert payload["request_id"] == "rid-1"
    assert payload["user_id"] == 7
    assert payload["password"] == REDACTED
    assert payload["level"] == "info"
