"""A JSON response rendered with orjson, for answers built outside a response model."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class FastJSONResponse(Response):
    """JSON response serialised by orjson (UTF-8, no spaces)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise `content` to JSON bytes."""
        # UTC as "Z", as pydantic writes it elsewhere in the API.
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_UTC_Z)
