"""Impressions in the online store: stored, read back, clicks attributed by request id and
position, exposure counted from impressions (a user shown a list and doing nothing counts)."""

from __future__ import annotations

from feature_store import FeatureStore
from feature_store.impressions import AttributedEvent, Impression


def _store(tmp_path) -> FeatureStore:
    return FeatureStore(f"sqlite:///{tmp_path / 'fs.db'}", offline_uri="")


def test_click_attributed_to_impression_and_position(tmp_path):
    store = _store(tmp_path)
    store.add_impressions(
        [
            Impression("r1", "u1", "user", "3", "production:3", 1000, ("a", "b", "c")),
            Impression("r2", "u2", "user", "3", "production:3", 1001, ("c", "a"), propensities=(0.5, 0.25)),
        ]
    )
    placed = store.attribute_events(
        [
            AttributedEvent("r1", "c", "click", 1100),
            AttributedEvent("r2", "c", "click", 1101),
            AttributedEvent("r2", "zz", "click", 1102),  # not shown: kept, no position
            AttributedEvent("nope", "a", "click", 1103),  # unknown impression
        ]
    )
    assert placed == 2
    logged = {x.impression.request_id: x for x in store.impressions()}
    assert logged["r1"].clicks == {"click": [2]}
    assert logged["r2"].clicks == {"click": [0]}
    assert logged["r2"].impression.propensities == (0.5, 0.25)


def test_exposure_counts_users_shown_a_list_who_did_nothing(tmp_path):
    store = _store(tmp_path)
    imps = [Impression(f"a{i}", f"u{i}", "user", "1", "production:1", 10 + i, ("x", "y")) for i in range(4)]
    # the challenger drives users away: 4 users shown a list, only one clicks
    imps += [Impression(f"b{i}", f"v{i}", "user", "2", "challenger:2", 10 + i, ("x", "y")) for i in range(4)]
    store.add_impressions(imps)
    store.attribute_events(
        [AttributedEvent(f"a{i}", "x", "click", 20) for i in range(3)] + [AttributedEvent("b0", "y", "click", 20)]
    )
    counts = {c.variant: c for c in store.exposure_counts(["click"])}
    assert counts["production:1"].users == 4 and counts["production:1"].users_with["click"] == 3
    assert counts["challenger:2"].users == 4 and counts["challenger:2"].users_with["click"] == 1
    assert counts["challenger:2"].impressions_with["click"] == 1
