"""Model kinds by name, and their parameters checked before anything is fitted. What a kind
can learn from or do is its class's capability flags (``recsys.models.base``), not a list of
names here. Importing this
module never imports torch: ``SentenceEncoder`` imports its optional dependencies only when
constructed."""

from __future__ import annotations

import functools
import inspect
from typing import Any, NotRequired

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from recsys.evaluation.baselines import ItemKNNRecommender, PopularityRecommender, RandomRecommender
from recsys.models.als import ALSEmbedder
from recsys.models.base import Embedder
from recsys.models.bpr import BPREmbedder
from recsys.models.content import SentenceEncoder, TagEncoder, TfidfEncoder
from recsys.models.ease import EASEEmbedder
from recsys.models.ensemble import EnsembleEmbedder
from recsys.models.item2vec import Item2VecEmbedder
from recsys.models.lightfm import LightFMEmbedder

MODEL_KINDS: dict[str, type[Embedder]] = {
    "als": ALSEmbedder,
    "bpr": BPREmbedder,
    "lightfm": LightFMEmbedder,
    "tags": TagEncoder,
    "tfidf": TfidfEncoder,
    "sbert": SentenceEncoder,
    "ease": EASEEmbedder,
    "ensemble": EnsembleEmbedder,
    "item2vec": Item2VecEmbedder,
    # reference recommenders every model should beat; fitted, evaluated and served like the rest
    "popular": PopularityRecommender,
    "random": RandomRecommender,
    "itemknn": ItemKNNRecommender,
}


def model_class(kind: str) -> type[Embedder]:
    """The class of ``kind`` (ValueError naming the known kinds for an unknown one)."""
    try:
        return MODEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(MODEL_KINDS))}") from None


def make_model(kind: str, **params: Any) -> Embedder:
    """A new, unfitted model of ``kind`` with ``params`` (ValueError for an unknown kind)."""
    return model_class(kind)(**params)


def param_names(kind: str) -> list[str]:
    """The keyword parameters ``kind``'s constructor accepts."""
    return list(_init_parameters(model_class(kind)))


@functools.cache
def _init_parameters(cls: type) -> dict[str, inspect.Parameter]:
    signature = inspect.signature(cls.__init__, eval_str=True)
    return {
        name: p
        for name, p in signature.parameters.items()
        if name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


@functools.cache
def _params_adapter(cls: type) -> TypeAdapter:
    """A pydantic validator of ``cls.__init__``'s keyword arguments, from its annotations."""
    fields = {
        name: NotRequired[Any if p.annotation is p.empty else p.annotation] for name, p in _init_parameters(cls).items()
    }
    params = with_config(ConfigDict(extra="forbid", arbitrary_types_allowed=True))(
        TypedDict(f"{cls.__name__}Params", fields)
    )
    return TypeAdapter(params)


def validate_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` checked against ``kind``'s constructor: names it does not take and values of
    the wrong type raise a pydantic ``ValidationError`` located at the parameter (``factors``,
    ``members.0.params.factors`` for an ensemble member); returns the values as converted
    (``"64"`` → 64, a YAML list → a tuple where the signature says tuple)."""
    errors: list[InitErrorDetails] = []
    checked = _validate_into(kind, params, (), errors)
    if errors:
        raise ValidationError.from_exception_data(f"{kind} params", errors)
    return checked


def _validate_into(kind: str, params: Any, loc: tuple, errors: list[InitErrorDetails]) -> dict[str, Any]:
    cls = MODEL_KINDS.get(kind)
    if cls is None:
        errors.append(
            InitErrorDetails(
                type=PydanticCustomError(
                    "unknown_kind",
                    "unknown model kind '{kind}'; known kinds: {known}",
                    {"kind": kind, "known": ", ".join(sorted(MODEL_KINDS))},
                ),
                loc=loc,
                input=kind,
            )
        )
        return params
    try:
        checked = _params_adapter(cls).validate_python(params)
    except ValidationError as exc:
        known = ", ".join(_init_parameters(cls))
        for err in exc.errors():
            if err["type"] == "extra_forbidden":
                error_type: Any = PydanticCustomError(
                    "unknown_param",
                    "{kind} has no parameter '{name}'; its parameters: {known}",
                    {"kind": kind, "name": str(err["loc"][-1]), "known": known},
                )
            else:
                error_type = PydanticCustomError(err["type"], err["msg"])
            errors.append(InitErrorDetails(type=error_type, loc=loc + tuple(err["loc"]), input=err["input"]))
        return params
    if kind == "ensemble" and checked.get("members"):
        checked["members"] = [
            _validate_member(m, loc + ("members", i), errors) for i, m in enumerate(checked["members"])
        ]
    return checked


def _validate_member(member: dict[str, Any], loc: tuple, errors: list[InitErrorDetails]) -> dict[str, Any]:
    extra = sorted(set(member) - {"kind", "params", "weight"})
    for key in extra:
        errors.append(
            InitErrorDetails(
                type=PydanticCustomError(
                    "unknown_key", "an ensemble member has kind, params and weight, not '{key}'", {"key": key}
                ),
                loc=loc + (key,),
                input=member[key],
            )
        )
    out = dict(member)
    if "weight" in member:
        try:
            out["weight"] = TypeAdapter(float).validate_python(member["weight"])
        except ValidationError as exc:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(exc.errors()[0]["type"], exc.errors()[0]["msg"]),
                    loc=loc + ("weight",),
                    input=member["weight"],
                )
            )
    if not isinstance(member.get("params", {}), dict):
        errors.append(
            InitErrorDetails(
                type=PydanticCustomError("dict_type", "Input should be a valid dictionary"),
                loc=loc + ("params",),
                input=member["params"],
            )
        )
        return out
    if "kind" not in member:
        errors.append(InitErrorDetails(type="missing", loc=loc + ("kind",), input=member))
    elif member["kind"] not in MODEL_KINDS:
        _validate_into(member["kind"], {}, loc + ("kind",), errors)
    else:
        out["params"] = _validate_into(member["kind"], member.get("params", {}), loc + ("params",), errors)
    return out
