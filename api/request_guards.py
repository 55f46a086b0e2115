"""What every HTTP request passes before a route sees it, and how refused input is answered.

- :class:`BodySizeLimit` (pure ASGI middleware): a body over ``RECSYS_MAX_BODY_BYTES`` is refused
  with 413 before it is read (Content-Length) or as soon as the streamed body passes the limit.
- :class:`StrictJSONRoute`: request bodies are parsed by :func:`recsys.validation.loads_json`,
  which refuses NaN/Infinity, numbers that overflow to infinity and lone surrogates (Python's
  ``json.loads``, FastAPI's default, accepts all of them).
- :func:`validation_error_response`: the 422 for a RequestValidationError, in the API's one
  error body (api/errors.py). It never echoes the input (a 10 MB batch must not come back
  twice, and a lone surrogate in it cannot be encoded): each problem names its field, with at
  most a short, escaped preview of a scalar.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorDetail, FieldError, error_bytes, error_response, field_of, validation_detail
from recsys.validation import InvalidJSON, loads_json

#: errors listed in one 422 answer; the rest are counted in a last entry
MAX_ERRORS = 20
_LOC_PART_CHARS = 100
_MSG_CHARS = 500
_PREVIEW_CHARS = 40


# ---- body size -----------------------------------------------------------------------------
class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with 413 (field ``body``).

    With a Content-Length over the limit the app is never called and nothing is read; a body
    without one (chunked) is counted as it streams in and cut off at the first chunk past the
    limit, whatever the app then answers is replaced by the 413.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        cut_off = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, cut_off
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    cut_off = True
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if cut_off:
                return  # the app's answer to a cut-off body (a parse error, most likely) is replaced
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not cut_off or response_started:
                raise
        if cut_off and not response_started:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        message = f"the request body is larger than {self.max_bytes:,} bytes (RECSYS_MAX_BODY_BYTES)"
        problem = FieldError(field="body", location="body", message=message, type="body_too_large")
        body = error_bytes(ErrorDetail(field="body", message=message, errors=[problem]))
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # the rest of the body is never read, so the connection can't carry another request
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit:,} bytes")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


# ---- strict JSON ---------------------------------------------------------------------------
class StrictJSONRequest(Request):
    """A request whose JSON body is parsed by :func:`recsys.validation.loads_json`."""

    _strict_json: Any

    async def json(self) -> Any:
        if not hasattr(self, "_strict_json"):
            self._strict_json = loads_json(await self.body())
        return self._strict_json


class StrictJSONRoute(APIRoute):
    """The route class of every router: FastAPI reads the body through :class:`StrictJSONRequest`.

    A refused body raises :class:`recsys.validation.InvalidJSON` (a ``json.JSONDecodeError``),
    which FastAPI turns into a 422 ``json_invalid`` error; :func:`validation_error_response`
    then names the field from the error's path.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def strict_json_handler(request: Request) -> Response:
            return await handle(StrictJSONRequest(request.scope, request.receive))

        return strict_json_handler


# ---- 422 answers ---------------------------------------------------------------------------
def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """The 422 of the API's error body, one entry per problem: bounded and always serializable."""
    errors = list(exc.errors())
    if any(len(_parts(err)) > 1 for err in errors):
        # A body that is one object or a list of them: the member it did not match is noise.
        errors = [err for err in errors if not (len(_parts(err)) == 1 and err.get("type") in _UNION_MISMATCH)]
    # a union's members give one error each for one input: merged (from a bounded head, so a
    # huge batch costs no more than a small one)
    head = 4 * MAX_ERRORS
    problems = _merged([_problem(err, exc.__cause__) for err in errors[:head]])
    not_listed = len(problems) - MAX_ERRORS + max(0, len(errors) - head)
    problems = problems[:MAX_ERRORS]
    if not problems:
        problems = [FieldError(field="body", location="body", message="invalid request", type="invalid")]
    if not_listed > 0:
        problems.append(
            FieldError(
                field=None, location=None, message=f"{not_listed:,} more errors not listed", type="too_many_errors"
            )
        )
    return error_response(422, validation_detail(problems))


def _problem(err: dict[str, Any], cause: BaseException | None) -> FieldError:
    kind = str(err.get("type", "value_error"))
    loc: tuple[Any, ...] = tuple(err.get("loc", ()))
    msg = str(err.get("msg", ""))
    if kind == "json_invalid":
        if isinstance(cause, InvalidJSON):
            # FastAPI gives the character offset only; the parser knows which field it was.
            loc, msg = ("body", *cause.path), cause.msg
        else:
            reason = (err.get("ctx") or {}).get("error")
            msg = f"the body is not valid JSON: {reason}" if reason else "the body is not valid JSON"
    location, field = field_of(
        [
            part if isinstance(part, int) else _safe_text(str(part), _LOC_PART_CHARS)
            for part in _parts({"loc": loc, "type": kind})
        ]
    )
    problem = FieldError(
        field=field, location=location, message=_safe_text(msg, _MSG_CHARS), type=_safe_text(kind, _LOC_PART_CHARS)
    )
    preview = _preview(err.get("input"))
    if preview is not _NO_PREVIEW:
        problem.input = preview  # set only when shown: an absent preview is left out of the body
    return problem


#: the error of a body that is not the union member tried (``EventIn | list[EventIn]``)
_UNION_MISMATCH = frozenset({"model_attributes_type", "model_type", "list_type", "dict_type"})


#: the member names pydantic puts last in the location of a scalar union (``str | int | …``)
_SCALAR_MEMBERS = frozenset({"str", "int", "float", "bool", "bytes", "none"})


def _parts(err: dict[str, Any]) -> list[Any]:
    """The error's location without the names pydantic adds for validators (``function-…``),
    for the member of a union body it tried (``EventIn``, ``list[EventIn]``, right after
    ``body``) and for the member of a scalar union (``str``, ``int``, … last, on a type error)."""
    parts = [p for p in err.get("loc", ()) if not (isinstance(p, str) and p.startswith("function-"))]
    if (
        len(parts) > 1
        and parts[0] == "body"
        and isinstance(parts[1], str)
        and (parts[1][:1].isupper() or "[" in parts[1])
    ):
        del parts[1]
    if len(parts) > 2 and parts[-1] in _SCALAR_MEMBERS and str(err.get("type", "")).endswith(("_type", "_parsing")):
        del parts[-1]
    return parts


def _merged(problems: list[FieldError]) -> list[FieldError]:
    """One entry per input for the errors of a union's members (``Input should be a valid
    string`` + ``… integer`` → ``Input should be a valid string or a valid integer``)."""
    out: list[FieldError] = []
    seen: dict[tuple[str | None, str | None], FieldError] = {}
    for p in problems:
        key = (p.location, p.field)
        first = seen.get(key)
        if first is not None and first.type.endswith("_type") and p.type.endswith("_type"):
            first.message += " or " + p.message.removeprefix("Input should be ")
            continue
        seen.setdefault(key, p)
        out.append(p)
    return out


_NO_PREVIEW = object()


def _preview(value: Any) -> Any:
    """A scalar input, shortened and escaped; nothing for containers (they can be megabytes)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 10**15 else _NO_PREVIEW
    if isinstance(value, float):
        return value if math.isfinite(value) else _NO_PREVIEW
    if isinstance(value, str):
        return _safe_text(value, _PREVIEW_CHARS)
    return _NO_PREVIEW


def _safe_text(text: str, limit: int) -> str:
    """At most ``limit`` characters (plus a marker), lone surrogates written as ``\\udXXX``."""
    if len(text) > limit:
        text = text[:limit] + f"… ({len(text):,} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
