"""What an uploaded file really is, and a safe name for it."""

from __future__ import annotations

import re
import unicodedata

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)
# Every type an upload can be stored (and so downloaded) as.
ACCEPTED_TYPES: tuple[str, ...] = (
    *dict.fromkeys(media_type for _, media_type in _SIGNATURES),
    "image/webp",
    "text/plain",
)
SNIFF_BYTES = 4096
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sample is still text.
        return exc.start >= len(head) - 3 and exc.reason == "unexpected end of data"
    return True


def sniff_content_type(head: bytes) -> str | None:
    """The media type the first bytes prove, or None when not an accepted type.

    The client's `Content-Type` is never trusted: a file is what its bytes say.

    Args:
        head: The first `SNIFF_BYTES` bytes of the file.

    Returns:
        One of the accepted types, or None.
    """
    for signature, media_type in _SIGNATURES:
        if head.startswith(signature):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head and _is_text(head):
        return "text/plain"
    return None


def safe_filename(name: str | None, fallback: str = "file") -> str:
    """A file name safe to store and to echo in `Content-Disposition`.

    Directory parts (`../`, Windows drive paths), control characters and anything outside a
    conservative set are removed; the result is never empty or hidden.
    """
    base = (name or "").replace("\\", "/").split("/")[-1]
    ascii_name = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_name).strip(" ._")
    cleaned = re.sub(r"_+", "_", cleaned)[:200]
    return cleaned or fallback
