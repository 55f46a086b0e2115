"""The one error body of the API.

Every error the app answers (4xx and 5xx, from a route, a dependency, request validation or the
body-size guard) has the same JSON body, :class:`Error`::

    {"detail": {"field": "k",
                "message": "k: Input should be less than or equal to 1000",
                "errors": [{"field": "k", "location": "query",
                            "message": "Input should be less than or equal to 1000",
                            "type": "less_than_equal", "input": 5000}]}}

``field`` names the input at fault (a path or query parameter, a header, or a body field as a
dotted path with ``[i]`` for list positions; ``null`` when no one input is), ``message`` says
what is wrong, ``errors`` lists every problem found (one for most errors; up to
:data:`api.request_guards.MAX_ERRORS` for invalid input). Routes raise :class:`ApiError`; the
app's handlers (api/main.py) turn it, any other HTTPException and every validation error into
this body, and the dashboard (api/ui) reads an error through :func:`error_detail` too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

Location = Literal["path", "query", "header", "body"]
LOCATIONS: tuple[str, ...] = ("path", "query", "header", "body", "cookie")

#: the error type of an error that is not a validation error, by status
STATUS_TYPES = {
    400: "bad_request",
    401: "key_required",
    403: "key_invalid",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "body_too_large",
    422: "invalid",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One problem with the request."""

    field: str | None = Field(
        description="the input at fault: parameter, header or body field (dotted path, [i] for a list "
        "position); null when no one input is"
    )
    location: Location | None = Field(None, description="where the input is: path, query, header or body")
    message: str
    type: str = Field(description="what kind of problem, e.g. not_found, conflict, key_required, missing, int_parsing")
    input: str | int | float | bool | None = Field(
        None, description="a short preview of the value given, for a scalar (never longer than 40 characters)"
    )


class ErrorDetail(BaseModel):
    field: str | None = Field(description="the (first) input at fault; null when no one input is")
    message: str = Field(description="what is wrong, for people")
    errors: list[FieldError] = Field(description="every problem found (at least one)")


class Error(BaseModel):
    """The body of every error answer (4xx and 5xx)."""

    detail: ErrorDetail


class ApiError(StarletteHTTPException):
    """An error answer of a route: status, the field at fault and what is wrong."""

    def __init__(
        self,
        status_code: int,
        field: str | None,
        message: str,
        *,
        error_type: str | None = None,
        location: Location | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status_code, detail=message, headers=dict(headers) if headers else None)
        self.field = field
        self.message = message
        self.error_type = error_type or STATUS_TYPES.get(status_code, "error")
        self.location = location

    def body(self) -> ErrorDetail:
        problem = FieldError(field=self.field, location=self.location, message=self.message, type=self.error_type)
        return ErrorDetail(field=self.field, message=self.message, errors=[problem])


def error_detail(exc: StarletteHTTPException) -> ErrorDetail:
    """The error body of any HTTPException: an :class:`ApiError`'s own, else its detail text
    (e.g. Starlette's 404 for an unknown path) with no field."""
    if isinstance(exc, ApiError):
        return exc.body()
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    kind = STATUS_TYPES.get(exc.status_code, "error")
    problem = FieldError(field=None, location=None, message=message, type=kind)
    return ErrorDetail(field=None, message=message, errors=[problem])


def validation_detail(problems: Sequence[FieldError]) -> ErrorDetail:
    """The body of a 422 listing ``problems`` (at least one): the first names the field."""
    first = problems[0]
    message = f"{first.field}: {first.message}" if first.field else first.message
    if len(problems) > 1:
        message += f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}, listed in errors)"
    return ErrorDetail(field=first.field, message=message, errors=list(problems))


def field_of(loc: Sequence[Any]) -> tuple[Location | None, str | None]:
    """``(location, field)`` of a pydantic error location, e.g. ``("body", 0, "item_id")`` →
    ``("body", "[0].item_id")``; ``("query", "k")`` → ``("query", "k")``; the body itself →
    ``("body", "body")``."""
    parts = list(loc)
    location = parts.pop(0) if parts and parts[0] in LOCATIONS else None
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    if not out:
        out = location if location == "body" else None
    return (location if location != "cookie" else None), out


def error_response(status_code: int, detail: ErrorDetail, headers: Mapping[str, str] | None = None) -> JSONResponse:
    content = Error(detail=detail).model_dump(mode="json", exclude_unset=True)
    return JSONResponse(status_code=status_code, content=content, headers=dict(headers) if headers else None)


def error_bytes(detail: ErrorDetail) -> bytes:
    """The JSON body of an error (for the ASGI middleware that answers before the app)."""
    return Error(detail=detail).model_dump_json(exclude_unset=True).encode()
