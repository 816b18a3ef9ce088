"""Client addresses: one parser, and the middleware's pass-through of other scopes."""

from __future__ import annotations

from typing import Any

import pytest

from app.core.client_address import ClientAddressMiddleware, parse_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:DB8:0:0::1", "2001:db8::1"),  # one spelling per address
        ("::ffff:203.0.113.9", "203.0.113.9"),
        ("fe80::1%eth0", None),
        ("203.0.113.9:443", None),
        ("not-an-ip", None),
        ("1" * 46, None),
        ("", None),
        (None, None),
    ],
)
def test_parse_ip_gives_the_canonical_address_or_none(
    text: str | None, expected: str | None
) -> None:
    assert parse_ip(text) == expected


async def test_scopes_other_than_http_pass_through_untouched() -> None:
    seen: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))

    middleware = ClientAddressMiddleware(inner, trusted_hosts="*")
    scope = {"type": "lifespan", "client": ("not-an-ip", 1)}
    await middleware(scope, None, None)
    assert seen == [scope]
