"""What the dashboard pages show, as typed values built from the registry, the store and the
served models (the templates only format them)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.versions import (  # noqa: F401  (what the dashboard pages import from here)
    COVERAGE_KEYS,
    MAIN_METRICS,
    IndexView,
    VersionView,
    run_url,
    version_view,
    with_bundle_facts,
)


@dataclass
class RecItem:
    """One recommended or similar item as a page lists it."""

    rank: int
    item_id: str
    title: str
    score: float
    reason: str | None
    categories: list[str] = field(default_factory=list)
    #: set by a version comparison: the other version does not return it
    only_here: bool = False


@dataclass
class RecList:
    """One answer (a mode, or a pinned version) as a column of the page."""

    heading: str
    mode: str | None
    model_version: str | None = None
    variant: str | None = None
    strategy: str | None = None
    items: list[RecItem] = field(default_factory=list)
    error: str | None = None
    api_url: str | None = None


@dataclass
class Comparison:
    """Two versions' answers for one user, side by side."""

    version_a: str
    version_b: str
    a: RecList | None = None
    b: RecList | None = None
    overlap: int = 0
    jaccard: float = 0.0
    new_in_b: list[str] = field(default_factory=list)
    error: str | None = None
