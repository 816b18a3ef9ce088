"""Small helpers shared by several test modules."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from app.core.logging import JsonFormatter


@contextmanager
def capture_logs() -> Iterator[io.StringIO]:
    """Collect JSON log lines (attach after create_app, which resets handlers)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
