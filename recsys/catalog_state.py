"""Catalog state of a served model: per-item titles, categories, attributes and availability,
and the allowed-item mask a request's filters give.

Kept apart from ranking (recsys.ranking) because it changes on a different clock: catalog
writes update it between trainings, while the vectors it is aligned with stay fixed (bar
cold-start items appended by ``add``). Masks for filters come from inverted indexes (category
→ positions, attribute key → value → positions) built on first use and dropped on any change,
so a filtered request costs a few array writes instead of a Python loop over the catalog; an
unfiltered request gets the cached availability array itself (read-only), no allocation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    """Business rules applied to every candidate list."""

    exclude_items: Sequence[str] = ()
    include_categories: Sequence[str] = ()
    exclude_categories: Sequence[str] = ()
    #: item attribute key → allowed values (an item must match every key)
    include_attributes: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    #: item attribute key → forbidden values
    exclude_attributes: Mapping[str, Sequence[Any]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.exclude_items
            or self.include_categories
            or self.exclude_categories
            or self.include_attributes
            or self.exclude_attributes
        )


NO_FILTERS = Filters()


@dataclass(frozen=True, slots=True)
class CatalogUpdate:
    """What one ``CatalogState.update`` changed."""

    #: positions whose searchable text changed (or was set for the first time)
    search_text_changed: tuple[int, ...] = ()
    #: positions whose content (title, description, categories) changed after it was first set
    content_changed: tuple[int, ...] = ()


_NO_POSITIONS = np.empty(0, np.int64)


class CatalogState:
    """Item ids and their catalog facts, aligned with the model's item rows (position j)."""

    def __init__(self, item_ids: Iterable[str], search_attributes: Sequence[str] = ()) -> None:
        self.item_ids: list[str] = [str(i) for i in item_ids]
        self.item_pos: dict[str, int] = {item_id: j for j, item_id in enumerate(self.item_ids)}
        #: attribute keys whose values are part of an item's searchable text (``search_text``)
        self.search_attributes: tuple[str, ...] = tuple(search_attributes)
        n = len(self.item_ids)
        self.titles: list[str] = [""] * n
        self.descriptions: list[str] = [""] * n
        self.categories: list[frozenset[str]] = [frozenset()] * n
        self.attributes: list[dict] = [{} for _ in range(n)]
        #: whether an item's text was ever set (its first text is the one it was encoded with)
        self._has_text = np.zeros(n, dtype=bool)
        self._available = np.ones(n, dtype=bool)
        self._changed()

    def __len__(self) -> int:
        return len(self.item_ids)

    # ---- changes -----------------------------------------------------------------------
    def update(self, catalog: pd.DataFrame) -> CatalogUpdate:
        """Refresh titles, descriptions, categories, attributes and availability from catalog
        rows (columns that are absent are left as they are; unknown item ids are skipped).

        Returns which positions' searchable text changed, and of those which had a text before
        whose content (title, description, categories) changed: their content vectors no
        longer match the text and must be re-encoded."""
        cols = set(catalog.columns)
        searched, reencode = [], []
        for row in catalog.to_dict("records"):
            j = self.item_pos.get(str(row["item_id"]))
            if j is None:
                continue
            before_text, before_content = self.search_text(j), self._content_key(j)
            if "title" in cols:
                self.titles[j] = str(row["title"] or "")
            if "description" in cols:
                self.descriptions[j] = str(row["description"] or "")
            if "categories" in cols:
                self.categories[j] = frozenset(row["categories"] or ())
            if "attributes" in cols:
                self.attributes[j] = dict(row["attributes"] or {})
            if "available" in cols:
                self._available[j] = bool(row["available"])
            if self.search_text(j) != before_text or not self._has_text[j]:
                searched.append(j)
            if self._has_text[j] and self._content_key(j) != before_content:
                reencode.append(j)
            self._has_text[j] = True
        self._changed()
        return CatalogUpdate(tuple(searched), tuple(reencode))

    def search_text(self, j: int) -> str:
        """What lexical search reads of the item at ``j``: title, description, categories and
        the values of the ``search_attributes`` it has."""
        attrs = self.attributes[j]
        values = [str(attrs[key]) for key in self.search_attributes if attrs.get(key) is not None]
        return "\n".join([self.titles[j], self.descriptions[j], *sorted(self.categories[j]), *values])

    def _content_key(self, j: int) -> tuple:
        """What content encoders read of an item (``title``, ``description``, ``categories``)."""
        return self.titles[j], self.descriptions[j], self.categories[j]

    def set_available(self, item_id: str, available: bool) -> None:
        j = self.item_pos.get(item_id)
        if j is not None:
            self._available[j] = available
            self._changed()

    def add(self, item_ids: Sequence[str]) -> list[str]:
        """Append items not yet known (available, no title/categories/attributes until an
        ``update``); returns the ids appended, in order."""
        new = [str(i) for i in dict.fromkeys(item_ids) if str(i) not in self.item_pos]
        start = len(self.item_ids)
        # Every per-item list grows before ``item_ids``, which publishes the new rows: a request
        # running meanwhile ranks len(item_ids) rows and finds all their facts.
        self.titles.extend("" for _ in new)
        self.descriptions.extend("" for _ in new)
        self.categories.extend(frozenset() for _ in new)
        self.attributes.extend({} for _ in new)
        self._has_text = np.concatenate([self._has_text, np.zeros(len(new), bool)])
        self._available = np.concatenate([self._available, np.ones(len(new), bool)])
        self._changed()
        self.item_pos.update({item_id: start + i for i, item_id in enumerate(new)})
        self.item_ids.extend(new)
        return new

    def _changed(self) -> None:
        available = self._available.copy()
        available.flags.writeable = False
        self._available_view = available
        self._unavailable = np.flatnonzero(~available)
        self._by_category: dict[str, np.ndarray] | None = None
        self._by_attribute: dict[str, dict[str, np.ndarray]] = {}

    # ---- reads -------------------------------------------------------------------------
    @property
    def available(self) -> np.ndarray:
        """Availability per position (read-only; change it with ``update``/``set_available``)."""
        return self._available_view

    @property
    def unavailable_positions(self) -> np.ndarray:
        return self._unavailable

    def positions(self, item_ids: Iterable[str]) -> np.ndarray:
        """Positions of the known ids, in order (repeats kept, unknown ids skipped)."""
        return np.array([j for j in map(self.item_pos.get, item_ids) if j is not None], dtype=np.int64)

    def blocked(self, filters: Filters = NO_FILTERS) -> np.ndarray:
        """Positions not allowed (the complement of ``mask``); without filters the cached
        unavailable positions, usually none."""
        if filters.empty:
            return self._unavailable
        return np.flatnonzero(~self.mask(filters))

    def mask(self, filters: Filters = NO_FILTERS) -> np.ndarray:
        """Allowed positions: available and passing every filter. Without filters this is the
        shared read-only availability array; otherwise a fresh array the caller may modify."""
        if filters.empty:
            return self._available_view
        mask = self._available.copy()
        if filters.include_categories:
            inside = np.zeros(len(mask), bool)
            for category in set(filters.include_categories):
                inside[self._category_positions(category)] = True
            mask &= inside
        for category in set(filters.exclude_categories):
            mask[self._category_positions(category)] = False
        for key, values in filters.include_attributes.items():
            inside = np.zeros(len(mask), bool)
            index = self._attribute_index(key)
            for value in {str(v) for v in values}:
                inside[index.get(value, _NO_POSITIONS)] = True
            mask &= inside
        for key, values in filters.exclude_attributes.items():
            index = self._attribute_index(key)
            for value in {str(v) for v in values}:
                mask[index.get(value, _NO_POSITIONS)] = False
        for item_id in filters.exclude_items:
            j = self.item_pos.get(item_id)
            if j is not None:
                mask[j] = False
        return mask

    def _category_positions(self, category: str) -> np.ndarray:
        if self._by_category is None:
            lists: dict[str, list[int]] = {}
            for j, cats in enumerate(self.categories):
                for c in cats:
                    lists.setdefault(c, []).append(j)
            self._by_category = {c: np.asarray(js, np.int64) for c, js in lists.items()}
        return self._by_category.get(category, _NO_POSITIONS)

    def _attribute_index(self, key: str) -> dict[str, np.ndarray]:
        """str(value) → positions for one attribute key. An item without the key is listed
        under "None" (the value ``str(attributes.get(key))`` gives, which filters compare)."""
        index = self._by_attribute.get(key)
        if index is None:
            lists: dict[str, list[int]] = {}
            for j, attrs in enumerate(self.attributes):
                lists.setdefault(str(attrs.get(key)), []).append(j)
            index = {v: np.asarray(js, np.int64) for v, js in lists.items()}
            self._by_attribute[key] = index
        return index
