"""ETags from versions, and `If-Match` evaluation (RFC 9110 section 13.1.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A strong tag as `etag` writes it: ASCII digits a version column can hold
# (`str.isdigit` also takes "٦", and int() refuses more than 4300 digits).
_STRONG_TAG = re.compile(r'"([0-9]{1,10})"')


def etag(version: int) -> str:
    """The strong ETag of a representation at `version`."""
    return f'"{version}"'


@dataclass(frozen=True, slots=True)
class IfMatch:
    """A parsed `If-Match` header: `*`, or a set of strong entity tags."""

    any_version: bool
    versions: frozenset[int]

    def matches(self, version: int) -> bool:
        """Strong comparison: weak tags (`W/"..."`) never match."""
        return self.any_version or version in self.versions


def parse_if_match(header: str | None) -> IfMatch | None:
    """Parse `If-Match`; None when absent. Unparsable tags simply never match."""
    if header is None:
        return None
    if header.strip() == "*":
        return IfMatch(True, frozenset())
    versions = set()
    for raw in header.split(","):
        tag = _STRONG_TAG.fullmatch(raw.strip())
        if tag is not None:
            versions.add(int(tag[1]))
    return IfMatch(False, frozenset(versions))
