"""HTTP request/response schemas (kept apart from the feature-store tables)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

from api.errors import Error, ErrorDetail, FieldError
from recsys import validation as rules

__all__ = ["Error", "ErrorDetail", "FieldError"]  # the one error body (api/errors.py), beside the other schemas


def _rule(problem: Callable[[Any], str | None], error_type: str) -> AfterValidator:
    """A pydantic validator from a recsys.validation rule: its reason becomes the error message."""

    def check(value: Any) -> Any:
        if (reason := problem(value)) is not None:
            raise PydanticCustomError(error_type, "{reason}", {"reason": reason})
        return value

    return AfterValidator(check)


def _string(
    problem: Callable[[Any], str | None], error_type: str, *, min_length: int, max_length: int, pattern: str
) -> Any:
    # The rule is checked by recsys.validation alone (one message per problem); the JSON schema
    # states the same constraints for clients and for schemathesis.
    schema = {"type": "string", "minLength": min_length, "maxLength": max_length, "pattern": pattern}
    return Annotated[str, _rule(problem, error_type), WithJsonSchema(schema)]


# External ids (users, items, events): see recsys.validation for the rules and why.
Id = _string(rules.id_problem, "id_invalid", min_length=1, max_length=rules.ID_MAX_LENGTH, pattern=rules.ID_PATTERN)
Label = _string(
    rules.label_problem, "label_invalid", min_length=1, max_length=rules.LABEL_MAX_LENGTH, pattern=rules.LABEL_PATTERN
)
EventType = _string(
    lambda v: rules.label_problem(v, max_length=64),
    "label_invalid",
    min_length=1,
    max_length=64,
    pattern=rules.LABEL_PATTERN,
)
Text = _string(
    rules.text_problem, "text_invalid", min_length=0, max_length=rules.TEXT_MAX_LENGTH, pattern=rules.TEXT_PATTERN
)
SearchText = _string(
    lambda v: rules.text_problem(v, max_length=1000) or (None if v.strip() else "must not be blank"),
    "text_invalid",
    min_length=1,
    max_length=1000,
    pattern=rules.TEXT_PATTERN,
)
#: one attribute value: a string, a finite number (an integer too, if a float can hold it), a boolean or null
AttrValue = Annotated[str | int | float | bool | None, _rule(rules.json_problem, "json_value_invalid")]
Mode = Literal["collaborative", "content", "hybrid"]
Fusion = Literal["weighted", "rrf"]
#: how /search matches the text (recsys.recommender.SEARCH_MATCHES)
SearchMatch = Literal["lexical", "semantic", "hybrid"]

_MIN_TS = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)


# ---- recommendations -----------------------------------------------------------------------
class RecommendedItem(BaseModel):
    item_id: str
    score: float
    title: str
    reason: str | None = None


class _Answer(BaseModel):
    request_id: str = Field(
        description="id of this served list (its impression); send it with the events it leads to "
        "(POST /events request_id) so they are credited to this list and position"
    )
    model_version: str
    variant: str = Field(description="A/B variant (alias) that answered, or 'pinned'")
    strategy: str
    mode: str | None = None
    offset: int = 0
    items: list[RecommendedItem]


class UserRecommendations(_Answer):
    user_id: str
    sources: list[str] | None = Field(
        None, description="interleaving (RECSYS_INTERLEAVE): the model version that contributed each position"
    )


class SimilarItems(_Answer):
    item_id: str


class SearchResults(_Answer):
    query: str


class SessionRecommendations(_Answer):
    pass


class FiltersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exclude_items: list[Id] = Field(default_factory=list, max_length=1000)
    include_categories: list[Label] = Field(default_factory=list, max_length=100)
    exclude_categories: list[Label] = Field(default_factory=list, max_length=100)
    include_attributes: dict[Label, list[AttrValue]] = Field(default_factory=dict, max_length=50)
    exclude_attributes: dict[Label, list[AttrValue]] = Field(default_factory=dict, max_length=50)


class SessionRequest(BaseModel):
    """An anonymous session: the items it touched (optionally weighted)."""

    model_config = ConfigDict(extra="forbid")

    item_ids: list[Id] = Field(min_length=1, max_length=1000)
    weights: list[Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]] | None = Field(
        default=None, description="one positive weight per item id"
    )
    session_id: Id | None = Field(default=None, description="stable id used for the A/B split")
    k: int = Field(10, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=10_000)
    filters: FiltersIn = Field(default_factory=FiltersIn)
    mode: Mode | None = None
    cf_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    content_weight: float | None = Field(None, ge=0, le=1000, allow_inf_nan=False)
    fusion: Fusion | None = None
    diversity: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    #: popularity calibration strength (0..1); None: the model's default
    calibration: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)

    @field_validator("weights")
    @classmethod
    def _same_length(cls, v, info):
        items = info.data.get("item_ids")
        if v is not None and items is not None and len(v) != len(items):
            raise ValueError(f"{len(v)} weights for {len(items)} item_ids")
        return v


# ---- events --------------------------------------------------------------------------------
class EventIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: Id | None = Field(None, description="idempotency key; default derived from the other fields")
    user_id: Id
    item_id: Id
    event_type: EventType = "interaction"
    value: float = Field(1.0, ge=-1e12, le=1e12, allow_inf_nan=False)
    timestamp: datetime | None = Field(None, description="when it happened (default: now); naive times are UTC")
    variant: Label | None = Field(None, description="A/B variant named by the recommendation response")
    model_version: Label | None = Field(None, description="model version named by the recommendation response")
    request_id: Id | None = Field(None, description="request_id of the recommendation response the event came from")

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if not (_MIN_TS <= v < _MAX_TS):
            raise ValueError("timestamp must be between 1970-01-01 and 2200-01-01")
        return v


class EventsAccepted(BaseModel):
    received: int
    inserted: int
    duplicates: int


# ---- catalog -------------------------------------------------------------------------------
class ItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id
    title: Text = ""
    description: Text = ""
    categories: list[Label] = Field(default_factory=list, max_length=100)
    attributes: dict[Label, AttrValue] = Field(default_factory=dict, max_length=100)
    available: bool = True


class ItemUpdate(BaseModel):
    """PUT body: the whole item except its id (taken from the path)."""

    model_config = ConfigDict(extra="forbid")

    title: Text = ""
    description: Text = ""
    categories: list[Label] = Field(default_factory=list, max_length=100)
    attributes: dict[Label, AttrValue] = Field(default_factory=dict, max_length=100)
    available: bool = True


class ItemOut(BaseModel):
    item_id: str
    title: str
    description: str
    categories: list[str]
    attributes: dict[str, Any]
    available: bool


class UserIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id
    attributes: dict[Label, AttrValue] = Field(default_factory=dict, max_length=100)


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    attributes: dict[Label, AttrValue] = Field(default_factory=dict, max_length=100)


class UserOut(BaseModel):
    user_id: str
    attributes: dict[str, Any]


class UserEvent(BaseModel):
    event_id: str
    item_id: str
    title: str = Field(description="the item's title in the catalog now")
    event_type: str
    value: float
    timestamp: datetime
    variant: str | None = Field(description="the A/B variant (and model version) the event was attributed to")


class UserEvents(BaseModel):
    user_id: str
    total: int = Field(description="how many events the user has in all")
    offset: int
    limit: int
    events: list[UserEvent] = Field(description="newest first")


class Written(BaseModel):
    written: int


# ---- operations ----------------------------------------------------------------------------
class Health(BaseModel):
    status: str
    model_version: str | None = None
    variants: dict[str, str] = Field(default_factory=dict)
    pid: int = Field(0, description="the worker process that answered")


class ReloadResult(BaseModel):
    version: str | None
    previous_version: str | None
    swapped: bool


class Reloaded(BaseModel):
    results: dict[str, ReloadResult]
    served: dict[str, str]


class LoadedModels(BaseModel):
    served: dict[str, str]
    cached_versions: list[str]
    split: dict[str, float]
