"""Query parameters parsed into one pydantic model in one pass.

FastAPI can declare a query model (``Annotated[Model, Query()]``), but it still resolves it
field by field in Python on every request (~10% of a recommendation's CPU, py-spy:
bench/profiles/hotpath_after.txt). :func:`query_model` gives a dependency that hands the
query string to ``Model.model_validate`` at once, plus the OpenAPI parameters FastAPI itself
renders for ``Annotated[Model, Query()]``, so the documented schema does not change. Refused
input raises the same RequestValidationError (``loc`` = ``["query", field, ...]``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def query_model(model: type[M]) -> tuple[Callable[[Request], Coroutine[Any, Any, M]], dict[str, Any]]:
    """``(dependency, openapi_extra)`` for a route whose query parameters are ``model``'s fields."""
    lists = list_fields(model)
    fields = frozenset(model.model_fields)

    async def parse(request: Request) -> M:
        params = request.query_params
        data: dict[str, Any] = {}
        for key in params:
            if key in lists:
                data[key] = params.getlist(key)
            elif key in fields:
                data[key] = params[key]  # the last value, as FastAPI takes it
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise RequestValidationError(
                [{**err, "loc": ("query", *err["loc"])} for err in exc.errors(include_url=False)]
            ) from None

    parse.__name__ = f"parse_{model.__name__}"
    return parse, {"parameters": _documented_parameters(model)}


def list_fields(model: type[BaseModel]) -> frozenset[str]:
    """Names of the model's list-valued fields: repeated query parameters (``?a=1&a=2``)."""
    return frozenset(name for name, f in model.model_fields.items() if _is_list(f.annotation))


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)) if origin is not None else False


def _documented_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI renders for ``Annotated[model, Query()]``."""
    probe = FastAPI()

    async def endpoint(query) -> None:
        return None

    endpoint.__annotations__ = {"query": Annotated[model, Query()], "return": None}  # a real type, not a string
    probe.get("/probe")(endpoint)
    return probe.openapi()["paths"]["/probe"]["get"]["parameters"]
