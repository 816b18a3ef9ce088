"""The one response shape of the resource API (seed 000), modelled once."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class Envelope(BaseModel, Generic[T]):
    """A successful answer: `{"status": "success", "data": ...}`."""

    status: Literal["success"] = "success"
    data: T


class Page(BaseModel, Generic[T]):
    """One page of a list, carried inside `Envelope.data`."""

    items: list[T]
    total: int | None = Field(default=None, description="Rows matching the filters.")
    limit: int
    offset: int = 0
    next_cursor: str | None = None


class ErrorDetail(BaseModel):
    """One problem with the request, usually one bad field."""

    field: str | None = Field(default=None, examples=["body.email"])
    message: str


class ErrorBody(BaseModel):
    """What went wrong, with a stable machine-readable `code`."""

    model_config = ConfigDict(json_schema_extra={"examples": []})

    code: str = Field(examples=["VALIDATION_ERROR"])
    message: str = Field(examples=["Invalid input"])
    details: list[ErrorDetail] = []
    request_id: str | None = None


class ErrorEnvelope(BaseModel):
    """Every non-2xx answer: `{"status": "error", "error": {...}}`."""

    status: Literal["error"] = "error"
    error: ErrorBody


def success(data: Any) -> dict[str, Any]:
    """Wrap `data` in the success envelope.

    Args:
        data: The payload (already JSON-serialisable or a pydantic model).

    Returns:
        The envelope as a dict.
    """
    return {"status": "success", "data": data}
