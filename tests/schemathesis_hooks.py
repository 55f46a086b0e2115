"""Schemathesis hooks (``SCHEMATHESIS_HOOKS=schemathesis_hooks``, tests/ on PYTHONPATH): generated
cases get hostile values (tests/hostile_input.py) in bodies, path and query parameters, and JSON
bodies are written as a hostile client would (NaN, Infinity, 1e400, escaped lone surrogates),
which schemathesis's own serializer (``json.dumps`` with ``allow_nan=False``) can't send."""

from __future__ import annotations

from typing import Any

import schemathesis
from hostile_input import URL_STRINGS, mutated, raw_json
from hypothesis import strategies as st


@schemathesis.hook
def flatmap_body(ctx: schemathesis.HookContext, body: Any) -> st.SearchStrategy:
    if isinstance(body, (dict, list)) and body:
        return st.one_of(st.just(body), mutated(body))
    return st.just(body)


def _one_hostile_value(params: dict[str, Any] | None) -> st.SearchStrategy:
    if not params:
        return st.just(params)
    changed = st.tuples(st.sampled_from(sorted(params)), URL_STRINGS).map(lambda kv: {**params, kv[0]: kv[1]})
    return st.one_of(st.just(params), changed)


@schemathesis.hook
def flatmap_path_parameters(ctx: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
    return _one_hostile_value(path_parameters)


@schemathesis.hook
def flatmap_query(ctx: schemathesis.HookContext, query: dict[str, Any] | None) -> st.SearchStrategy:
    return _one_hostile_value(query)


@schemathesis.serializer("application/json")
def hostile_json(ctx: schemathesis.SerializationContext, value: Any) -> bytes:
    return raw_json(value)
