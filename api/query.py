"""Request parameters parsed into one pydantic model in one pass.

FastAPI can declare a query model (``Annotated[Model, Query()]``), but it still resolves it
field by field in Python on every request, and each dependency of a route costs a round of its
dependency solver (~40% of a recommendation's CPU before, py-spy: bench/profiles/). Here:

- :func:`query_model` gives a dependency that hands the query string to ``Model.model_validate``
  at once, plus the OpenAPI parameters FastAPI itself renders for ``Annotated[Model, Query()]``.
- :func:`query_reader` is the same parse for a route that reads all its inputs in one
  dependency and gathers the errors itself (``checked`` for a single path or header value).
- :func:`documented_inputs` renders the OpenAPI parameters and security of a declarative
  signature, so a route that reads its inputs itself documents exactly what FastAPI would.
- :class:`DirectRoute`: the route class of such a route (``endpoint(request) -> Response``):
  FastAPI's per-request dependency solving and response validation are skipped, as there is
  nothing for them to do; errors raised are answered by the app's exception handlers as usual.

Refused input raises the same RequestValidationError (``loc`` = ``["query", field, ...]``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.routing import APIRoute
from pydantic import BaseModel, TypeAdapter, ValidationError

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def query_reader(model: type[M]) -> Callable[[Request], tuple[M | None, list[dict[str, Any]]]]:
    """``read(request) -> (model or None, errors)``: the query string validated in one call."""
    lists = list_fields(model)
    fields = frozenset(model.model_fields)

    def read(request: Request) -> tuple[M | None, list[dict[str, Any]]]:
        params = request.query_params
        data: dict[str, Any] = {}
        for key in params:
            if key in lists:
                data[key] = params.getlist(key)
            elif key in fields:
                data[key] = params[key]  # the last value, as FastAPI takes it
        try:
            return model.model_validate(data), []
        except ValidationError as exc:
            return None, [{**err, "loc": ("query", *err["loc"])} for err in exc.errors(include_url=False)]

    return read


def query_model(model: type[M]) -> tuple[Callable[[Request], Coroutine[Any, Any, M]], dict[str, Any]]:
    """``(dependency, openapi_extra)`` for a route whose query parameters are ``model``'s fields."""
    read = query_reader(model)

    async def parse(request: Request) -> M:
        value, errors = read(request)
        if errors:
            raise RequestValidationError(errors)
        return value

    parse.__name__ = f"parse_{model.__name__}"
    return parse, {"parameters": _documented_parameters(model)}


def checked(adapter: TypeAdapter[T], value: Any, loc: tuple[str, ...], errors: list[dict[str, Any]]) -> T | None:
    """``value`` validated by ``adapter``; on failure None, and the errors (at ``loc``) appended."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        errors.extend({**err, "loc": (*loc, *err["loc"])} for err in exc.errors(include_url=False))
        return None


def list_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the model's list-valued fields: repeated query parameters (``?a=1&a=2``)."""
    return frozenset(name for name, f in model.model_fields.items() if _is_list(f.annotation))


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if origin is not None else False


def documented_inputs(
    endpoint: Callable[..., Any], path: str = "/probe", dependencies: Sequence[Depends] = ()
) -> dict[str, Any]:
    """The OpenAPI ``parameters`` (and ``security``) FastAPI renders for ``endpoint``'s declared
    signature on ``path`` with route ``dependencies``: the ``openapi_extra`` of a route that
    reads the same inputs itself."""
    probe = FastAPI()
    probe.get(path, dependencies=list(dependencies))(endpoint)
    operation = probe.openapi()["paths"][path]["get"]
    return {key: operation[key] for key in ("parameters", "security") if key in operation}


def _documented_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI renders for ``Annotated[model, Query()]``."""

    async def endpoint(query) -> None:
        return None

    endpoint.__annotations__ = {"query": Annotated[model, Query()], "return": None}  # a real type, not a string
    return documented_inputs(endpoint)["parameters"]


class DirectRoute(APIRoute):
    """A route whose endpoint is ``async def endpoint(request: Request) -> Response`` and reads
    its inputs itself (documented through ``openapi_extra``, e.g. :func:`documented_inputs`).

    FastAPI's handler would solve an empty dependency graph, read no body and validate no
    response on every request; this handler calls the endpoint directly (~30 µs per request).
    Exceptions still reach the app's handlers (the route is wrapped like every APIRoute)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        params = list(inspect.signature(endpoint).parameters)
        if len(params) != 1 or not inspect.iscoroutinefunction(endpoint) or kwargs.get("dependencies"):
            raise TypeError(f"{endpoint.__name__}: a DirectRoute endpoint is async def f(request) -> Response")
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return self.endpoint
