"""CatalogState: the masks a request's filters give stay right after catalog updates and
additions (checked against a direct reading of the catalog rows)."""

import numpy as np
import pandas as pd
import pytest

from recsys.catalog_state import CatalogState, Filters
from recsys.datasets.synthetic import generate_synthetic


@pytest.fixture
def items() -> pd.DataFrame:
    return generate_synthetic(n_users=60, n_items=120, n_events=600, n_clusters=4, seed=5).items


def reference_mask(frame: pd.DataFrame, ids: list[str], f: Filters) -> np.ndarray:
    """What the filters allow, read row by row from the catalog frame (ids missing from the
    frame: available, no categories, no attributes)."""
    rows = {r["item_id"]: r for r in frame.to_dict("records")}
    out = []
    for item_id in ids:
        row = rows.get(item_id, {"categories": [], "attributes": {}, "available": True})
        cats, attrs = set(row["categories"]), row["attributes"]
        ok = bool(row["available"]) and item_id not in f.exclude_items
        ok &= not f.include_categories or bool(cats & set(f.include_categories))
        ok &= not cats & set(f.exclude_categories)
        ok &= all(str(attrs.get(k)) in {str(v) for v in vs} for k, vs in f.include_attributes.items())
        ok &= all(str(attrs.get(k)) not in {str(v) for v in vs} for k, vs in f.exclude_attributes.items())
        out.append(ok)
    return np.asarray(out)


def filter_cases(frame: pd.DataFrame) -> list[Filters]:
    cats = sorted({c for cs in frame["categories"] for c in cs})
    return [
        Filters(),
        Filters(include_categories=(cats[0],)),
        Filters(include_categories=(cats[0], cats[-1]), exclude_categories=(cats[1],)),
        Filters(include_attributes={"cluster": [1, "2"]}),
        Filters(exclude_attributes={"cluster": [0]}, exclude_items=(frame["item_id"].iloc[3], "not-an-item")),
        Filters(include_attributes={"cluster": [1], "color": ["None"]}),  # a missing key reads as "None"
        Filters(include_categories=("no-such-category",)),
    ]


def test_masks_match_the_catalog_rows_and_follow_updates(items):
    state = CatalogState(items["item_id"])
    state.update(items)
    for f in filter_cases(items):
        np.testing.assert_array_equal(state.mask(f), reference_mask(items, state.item_ids, f), err_msg=str(f))
        np.testing.assert_array_equal(state.blocked(f), np.flatnonzero(~reference_mask(items, state.item_ids, f)))
    # Masks are cached per category/attribute: an update must invalidate them.
    changed = items.copy()
    changed.loc[:9, "available"] = False
    changed.at[10, "categories"] = ["fresh-category"]
    changed.at[11, "attributes"] = {"cluster": 99}
    state.update(changed.iloc[:12])
    for f in [
        *filter_cases(changed),
        Filters(include_categories=("fresh-category",)),
        Filters(include_attributes={"cluster": [99]}),
    ]:
        np.testing.assert_array_equal(state.mask(f), reference_mask(changed, state.item_ids, f), err_msg=str(f))
    assert state.mask(Filters(include_categories=("fresh-category",))).sum() == 1
    assert state.titles[0] == items["title"].iloc[0]


def test_additions_are_available_filterable_and_positioned_at_the_end(items):
    known, later = items.iloc[:100], items.iloc[100:]
    state = CatalogState(known["item_id"])
    state.update(items)  # rows of not-yet-known items are skipped
    assert len(state) == 100
    added = state.add([*later["item_id"], known["item_id"].iloc[0], later["item_id"].iloc[0]])
    assert added == later["item_id"].tolist(), "only new ids, once each, in order"
    assert [state.item_pos[i] for i in added] == list(range(100, 120))
    assert state.available[100:].all()
    # Before their catalog rows arrive, added items have no categories or attributes.
    cat = later["categories"].iloc[0][0]
    assert not state.mask(Filters(include_categories=(cat,)))[100:].any()
    assert state.mask(Filters(exclude_categories=(cat,)))[100:].all()
    later = later.assign(available=[i % 2 == 0 for i in range(len(later))])
    state.update(later)
    for f in filter_cases(items):
        expected = reference_mask(pd.concat([known, later]), state.item_ids, f)
        np.testing.assert_array_equal(state.mask(f), expected, err_msg=str(f))


def test_unfiltered_mask_is_shared_read_only_and_tracks_availability(items):
    state = CatalogState(items["item_id"])
    mask = state.mask()
    assert mask is state.mask() and mask.all()
    with pytest.raises(ValueError):
        mask[0] = False  # requests can't change the catalog through the shared mask
    filtered = state.mask(Filters(exclude_items=("i0",)))
    filtered[1] = False  # a filtered mask is the caller's own copy
    assert state.mask().all()
    state.set_available("i5", False)
    assert not state.mask()[state.item_pos["i5"]] and state.blocked().tolist() == [state.item_pos["i5"]]
    state.set_available("unknown", False)  # unknown ids are ignored
    assert state.mask().sum() == len(items) - 1


def test_positions_keep_order_and_repeats_and_skip_unknown(items):
    state = CatalogState(items["item_id"])
    got = state.positions(["i3", "nope", "i1", "i3"])
    assert got.dtype == np.int64 and got.tolist() == [3, 1, 3]
    assert state.positions([]).tolist() == []
