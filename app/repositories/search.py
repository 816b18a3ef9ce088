"""Text search helpers shared by the repositories."""

from __future__ import annotations

LIKE_ESCAPE = "\\"


def escape_like(text: str) -> str:
    """`text` lower-cased with LIKE wildcards escaped, so `%` and `_` match themselves.

    Use with `func.lower(column).like(pattern, escape=LIKE_ESCAPE)`.
    """
    return (
        text.lower()
        .replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
