"""Every problem of a pydantic validation error on one line, for the user to fix at once.

The command line, the experiment specs and the pipeline configs describe a bad file or
environment the same way: ``what field.path: message, got 'value'; other.field: message``.
Every problem is listed (a user fixing one at a time would otherwise run the command again
for each).
"""

from __future__ import annotations

import typing

from pydantic import BaseModel, ValidationError


def describe_validation_error(exc: ValidationError, what: str | None = None, model: type | None = None) -> str:
    """``what field.path: message, got 'value'; other.path: message`` for every problem of
    ``exc``; with ``model`` (the validated class), an unknown key is answered with the known
    ones. Settings errors name the environment variable (``environment RECSYS_PORT: …``)."""
    settings = exc.title == "Settings" and what is None
    if what is None:
        what = "environment" if settings else exc.title
    problems = [_problem(err, model, settings) for err in exc.errors()]
    return f"{what} " + "; ".join(dict.fromkeys(problems))


def _problem(err: typing.Any, model: type | None, settings: bool) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    where = ".".join(str(p) for p in loc)
    if settings:
        where = f"RECSYS_{where.upper()}"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        known = _known_fields(model, loc[:-1]) if model is not None else None
        message = "unknown key" + (f"; known keys here: {', '.join(known)}" if known else "")
    elif (
        err["type"] != "missing"
        and isinstance(value, (str, int, float))
        and not isinstance(value, bool)
        and "unknown" not in err["type"]
    ):
        shown = repr(value)
        message += f", got {shown if len(shown) <= 60 else shown[:57] + '...'}"
    return f"{where or '(top level)'}: {message}"


def _known_fields(model: type, path: tuple) -> list[str] | None:
    """Field names of the pydantic model found by following ``path`` from ``model``."""
    for name in path:
        field = model.model_fields.get(name) if isinstance(name, str) else None
        if field is None:
            return None
        candidates = [
            a
            for a in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return None
        model = candidates[0]
    return list(model.model_fields)
