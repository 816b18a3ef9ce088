"""The caller's IP address: believed from trusted proxies only, always validated."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Any, cast

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_PEER = "app.peer"  # scope key: the socket peer, before the proxy headers


_FORWARDED = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})


@lru_cache(maxsize=4096)  # clients repeat: ipaddress costs microseconds a call
def parse_ip(text: str | None) -> str | None:
    """`text` as an IP address in its canonical form, or None if it is not one.

    IPv6 scope ids (`fe80::1%eth0`, of any length) are refused: no client on a
    network has one. An IPv4-mapped IPv6 address is given as IPv4, so a client
    has one form for rate limits and lockouts.
    """
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _checked(client: Any, peer: Any) -> tuple[str, int] | None:
    for candidate in (client, peer):
        host = parse_ip(candidate[0]) if candidate else None
        if host is not None:
            return host, int(candidate[1] or 0)
    return None


class ClientAddressMiddleware:
    """Make `scope["client"]` the caller's validated IP address, or None.

    Behind a trusted proxy (`trusted_hosts`: FORWARDED_ALLOW_IPS) the address
    comes from `X-Forwarded-For` and the scheme from `X-Forwarded-Proto`, read
    by uvicorn's parser (the nearest hop that is not a trusted proxy). Text
    that is not an IP address falls back to the socket peer; a peer that is no
    address either (a server in front already believed garbage) becomes None.
    So sessions, the audit log, rate limits, lockouts and logs all see one
    validated value, never text a client chose.
    """

    def __init__(self, app: ASGIApp, *, trusted_hosts: str) -> None:
        """Wrap `app`, believing forwarded headers from `trusted_hosts` only."""
        self.app = app
        # uvicorn types its middleware with its own (stricter) ASGI types.
        self._forwarded = cast(
            "ASGIApp",
            ProxyHeadersMiddleware(cast("Any", self._validated), trusted_hosts),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not any(name in _FORWARDED for name, _ in scope["headers"]):
            # Nothing forwarded: only the peer to check. uvicorn's parser
            # (which parses the peer against the trusted list on every call)
            # cost about 14 us a request, a tenth of a cached GET /users/me.
            scope["client"] = _checked(scope.get("client"), None)
            await self.app(scope, receive, send)
            return
        scope[_PEER] = scope.get("client")
        await self._forwarded(scope, receive, send)

    async def _validated(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["client"] = _checked(scope.get("client"), scope.pop(_PEER, None))
        await self.app(scope, receive, send)
