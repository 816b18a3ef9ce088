"""What one load run sends, and what it measured: shared by wrk and the Python generator.

A `LoadSpec` describes the requests of one run. Most are static (the same request
over and over); three kinds change per request:

- `rotate`: cycle through a list of bodies (login as many different users).
- `patch_pool`: a pool of (item id, ETag) pairs; a request takes one pair out of
  the pool and sends `If-Match: <etag>`; its 2xx answer puts the item back with
  the new ETag. At most one request per connection is in flight, so a pool larger
  than the connection count never hands the same item to two requests at once.
- `refresh_pool`: a pool of one-time refresh tokens; a request takes one, its
  answer puts the rotated token back (each token is used exactly once).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["static", "rotate", "patch_pool", "refresh_pool"]


@dataclass(frozen=True)
class LoadSpec:
    """One run: where, how hard, how long, and which requests."""

    base_url: str
    method: str
    path: str
    connections: int
    duration: float
    timeout: float = 10.0
    kind: Kind = "static"
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None
    bodies: list[str] = field(default_factory=list)
    # patch_pool: [[id, etag], ...]; the path holds "{id}", the body "{n}".
    items: list[list[Any]] = field(default_factory=list)
    # refresh_pool: one-time tokens; the body holds "{token}".
    tokens: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the Python generator reads it from a file)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadSpec:
        """Inverse of `to_dict`."""
        return cls(**data)


@dataclass
class RunResult:
    """What one run measured."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def errors(self) -> int:
        """Non-2xx answers plus socket errors (connect, read, write, timeout)."""
        return self.non_2xx + sum(self.socket_errors.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of `to_dict`."""
        return cls(**data)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]
