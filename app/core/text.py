"""Text rules shared by schemas, models, emails and migrations.

Two concerns: the canonical form under which emails and usernames are unique
(so that Unicode-equivalent spellings are one identity), and the characters no
name may hold (so that no user text can add lines to an email).
"""

from __future__ import annotations

import unicodedata

# Control (Cc: newlines, tabs, ...), format (Cf: bidi overrides, zero-width
# characters) and the two Unicode line/paragraph separators (Zl, Zp), which
# mail clients and `str.splitlines` also break lines at.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


class IdentityCollisionError(Exception):
    """Existing accounts share one canonical email or username (migration 0006)."""


def canonical_identity(text: str) -> str:
    """The form under which an email or a username is unique and looked up.

    NFKC, then case folding (then NFKC again, as Unicode's NFKC_Casefold does,
    because folding can produce characters NFKC would compose): fullwidth,
    compatibility and case variants of one spelling map to one string.

    An email's domain is only lower-cased after NFKC: email-validator has
    already normalised it by IDNA (UTS 46), which maps width and case, and
    full case folding would merge domains IDNA 2008 keeps apart (`faß.de` and
    `fass.de` are two registrations).

    Args:
        text: An email address (it contains "@") or a username, as typed.

    Returns:
        The canonical form; equal for every equivalent spelling.
    """
    normalised = unicodedata.normalize("NFKC", text.strip())
    local, at, domain = normalised.rpartition("@")
    if not at:
        return _folded(normalised)
    return f"{_folded(local)}@{domain.lower()}"


def _folded(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def unsafe_characters(text: str) -> list[str]:
    """The control, format and line-separator characters in `text`, in order."""
    return [char for char in text if unicodedata.category(char) in _UNSAFE_CATEGORIES]


def single_line(text: str) -> str:
    """`text` with every unsafe character replaced by a space.

    For values put into an email's text: whatever the database holds, no
    value can start a line of its own there.
    """
    return "".join(
        " " if unicodedata.category(char) in _UNSAFE_CATEGORIES else char
        for char in text
    )
