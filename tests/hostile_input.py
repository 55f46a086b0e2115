"""Hypothesis strategies for hostile JSON and URL values, a serializer that writes what
``json.dumps`` refuses, and the check that a store holds nothing broken. Shared by
tests/test_api_input_validation.py and the schemathesis hooks (tests/schemathesis_hooks.py)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import strategies as st

from recsys import validation


class RawNumber(str):
    """A JSON number token written as is (``1e400``: no Python float holds it)."""


#: text that a renderer would read as markup: matplotlib math text, rich markup, HTML
MARKUP_STRINGS = ["$\\frac{$", "$x$", "[/x]", "[bold red]loud[/]", "<b>x</b>", "{{ 7*7 }}"]
#: times at both ends of the accepted range (and just past them)
EDGE_TIMES = ["1970-01-01T00:00:00Z", "2199-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "2200-01-01T00:00:00Z"]
#: strings every id/label/text rule is about: lone surrogates, NUL and other controls, '/',
#: '.' and '..' (paths normalise them away), blanks, over-long, markup, edge times
HOSTILE_STRINGS = st.one_of(
    st.sampled_from(
        ["\ud800", "a\udfffb", "u\x00x", "\x00", "a/b", "/", ".", "..", " ", "\t", "x" * 256, "\x7f", "\x1b[0m"]
        + ["\u2028", "é", *MARKUP_STRINGS, *EDGE_TIMES]
    ),
    st.text(st.characters(codec=None, categories=["Cc", "Cs", "Zs", "Lu"]), min_size=0, max_size=8),
)
#: the same for path and query parameters, less what a URL can't carry (surrogates) or what
#: changes the route rather than the value ('/')
URL_STRINGS = st.one_of(
    st.sampled_from(
        ["p\x00x", "\x00", " ", "\t", "x" * 256, "\x7f", "\x1b[0m", "\u2028", *MARKUP_STRINGS, *EDGE_TIMES]
    ),
    st.text(
        st.characters(codec="utf-8", categories=["Cc", "Zs", "Lu"], exclude_characters="/"), min_size=1, max_size=8
    ),
)
HOSTILE_NUMBERS = st.one_of(
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            RawNumber("1e400"),
            RawNumber("-1e999"),
            RawNumber("1e-400"),
            2**64,
            -(2**63) - 1,
            10**400,
            -(10**400),
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
HOSTILE = st.one_of(HOSTILE_STRINGS, HOSTILE_NUMBERS, st.booleans(), st.none())


def raw_json(value: Any) -> bytes:
    """``json.dumps``, but NaN/Infinity written as such, RawNumber tokens unquoted, surrogates
    escaped (``\\ud800``): JSON text as a hostile client would send it."""
    tokens: list[str] = []

    def mark(v: Any) -> Any:
        if isinstance(v, RawNumber):
            tokens.append(str(v))
            return f"__raw_{len(tokens) - 1}__"
        if isinstance(v, dict):
            return {mark(k) if isinstance(k, str) else k: mark(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [mark(x) for x in v]
        return v

    text = json.dumps(mark(value), allow_nan=True, ensure_ascii=True, default=str)
    for i, token in enumerate(tokens):
        text = text.replace(f'"__raw_{i}__"', token)
    return text.encode("ascii")


def _leaves(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every scalar, plus (path, None) for "a new key in this object"."""
    if isinstance(value, dict):
        out = [leaf for k, v in value.items() for leaf in _leaves(v, (*path, k))]
        return [*out, (*path, None)]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, i))]
    return [path]


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if head is None:  # a hostile key (the drawn string, else the repr of the drawn value)
        key = new if isinstance(new, str) and not isinstance(new, RawNumber) else repr(new)
        return {**value, key: 1}
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[head] = _replace(copy[head], rest, new)
    return copy


def mutated(body: Any, max_changes: int = 3) -> st.SearchStrategy:
    """``body`` with 1..max_changes scalars (or new keys) replaced by hostile values."""

    @st.composite
    def strategy(draw: st.DrawFn) -> Any:
        value = body
        for _ in range(draw(st.integers(1, max_changes))):
            value = _replace(value, draw(st.sampled_from(_leaves(value))), draw(HOSTILE))
        return value

    return strategy()


def assert_stored_values_valid(store: Any) -> None:
    """Everything in the feature store passes recsys.validation: reachable ids, storable text,
    finite numbers."""
    data = store.snapshot()
    for item in data.items.itertuples():
        assert validation.id_problem(item.item_id) is None, item.item_id
        assert validation.text_problem(item.title) is None and validation.text_problem(item.description) is None
        assert all(validation.label_problem(c) is None for c in item.categories), item.categories
        assert validation.json_problem(item.attributes) is None, item.attributes
    assert not (set(data.items["item_id"]) | set(data.users["user_id"])) & {".", ".."}
    for user in data.users.itertuples():
        assert validation.id_problem(user.user_id) is None and validation.json_problem(user.attributes) is None
    assert all(validation.id_problem(e) is None for e in data.events["event_id"])
    assert all(validation.label_problem(t, 64) is None for t in data.events["event_type"])
    assert data.events["value"].map(math.isfinite).all()
