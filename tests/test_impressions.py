"""Impressions in the online store (SQLite and PostgreSQL): stored, read back, clicks attributed
by request id and position (also when the click is stored before its impression), attributed
once per event id, exposure counted from impressions (a user shown a list and doing nothing
counts), exported to the offline Parquet log like events."""

from __future__ import annotations

from feature_store import FeatureStore
from feature_store.impressions import Impression


def _store(url: str, tmp_path) -> FeatureStore:
    store = FeatureStore(url, offline_uri=str(tmp_path / "offline"))
    store.upsert_items([{"item_id": i} for i in ("a", "b", "c", "x", "y", "zz")])
    return store


def _click(user: str, item: str, request_id: str, event_id: str, ts: float = 1.1) -> dict:
    return {
        "user_id": user,
        "item_id": item,
        "event_type": "click",
        "timestamp": ts,
        "event_id": event_id,
        "request_id": request_id,
    }


def test_click_attributed_to_impression_and_position(db_url, tmp_path):
    store = _store(db_url, tmp_path)
    store.add_impressions(
        [
            Impression("r1", "u1", "user", "3", "production:3", 1000, ("a", "b", "c")),
            Impression("r2", "u2", "user", "3", "production:3", 1001, ("c", "a"), propensities=(0.5, 0.25)),
        ]
    )
    inserted, _ = store.add_events(
        [
            _click("u1", "c", "r1", "e1"),
            _click("u2", "c", "r2", "e2"),
            _click("u2", "zz", "r2", "e3"),  # not shown: stored, no position
            _click("u3", "a", "nope", "e4"),  # unknown impression
            {"user_id": "u1", "item_id": "a", "event_type": "click", "timestamp": 1.2},  # no request id
        ]
    )
    assert inserted == 5  # every event is an event, attributed or not
    logged = {x.impression.request_id: x for x in store.impressions()}
    assert logged["r1"].clicks == {"click": [2]}
    assert logged["r2"].clicks == {"click": [0]}
    assert logged["r2"].impression.propensities == (0.5, 0.25)
    # a re-sent event is attributed once
    assert store.add_events([_click("u1", "c", "r1", "e1")]) == (0, 1)
    assert {x.impression.request_id: x for x in store.impressions()}["r1"].clicks == {"click": [2]}


def test_click_stored_before_its_impression_gets_its_position(db_url, tmp_path):
    store = _store(db_url, tmp_path)
    store.add_events([_click("u1", "b", "late", "e1")])  # the impression is still in a queue
    store.add_impressions([Impression("late", "u1", "user", "1", "production:1", 1000, ("a", "b"))])
    (logged,) = store.impressions()
    assert logged.clicks == {"click": [1]}
    (counts,) = store.exposure_counts(["click"])
    assert counts.impressions_with["click"] == 1


def test_exposure_counts_users_shown_a_list_who_did_nothing(db_url, tmp_path):
    store = _store(db_url, tmp_path)
    imps = [Impression(f"a{i}", f"u{i}", "user", "1", "production:1", 10 + i, ("x", "y")) for i in range(4)]
    # the challenger drives users away: 4 users shown a list, only one clicks
    imps += [Impression(f"b{i}", f"v{i}", "user", "2", "challenger:2", 10 + i, ("x", "y")) for i in range(4)]
    store.add_impressions(imps)
    store.add_events([_click(f"u{i}", "x", f"a{i}", f"ea{i}") for i in range(3)] + [_click("v0", "y", "b0", "eb0")])
    counts = {c.variant: c for c in store.exposure_counts(["click"])}
    assert counts["production:1"].users == 4 and counts["production:1"].users_with["click"] == 3
    assert counts["challenger:2"].users == 4 and counts["challenger:2"].users_with["click"] == 1
    assert counts["challenger:2"].impressions_with["click"] == 1


def test_impressions_exported_to_the_offline_log(db_url, tmp_path):
    store = _store(db_url, tmp_path)
    store.add_impressions(
        [
            Impression("r1", "u1", "user", "3", "production:3", 1_000, ("a", "b")),
            Impression("r2", None, "similar", "3", "production:3", 90_000_000, ("c",), propensities=(0.5,)),
        ]
    )
    assert store.export_offline().impressions == 2
    store.add_impressions([Impression("r3", "u2", "search", "4", "challenger:4", 2_000, ("a",), sources=("4",))])
    assert store.export_offline().impressions == 1  # by the watermark: only what is new
    assert store.export_offline().impressions == 0
    table = store.offline_impressions.read_table()
    rows = {r["request_id"]: r for r in table.to_pylist()}
    assert sorted(rows) == ["r1", "r2", "r3"]
    assert rows["r1"]["items"] == ["a", "b"] and rows["r1"]["propensities"] is None
    assert rows["r2"]["propensities"] == [0.5] and rows["r2"]["user_id"] is None
    assert rows["r3"]["sources"] == ["4"] and rows["r3"]["variant"] == "challenger:4"
    # two dates, two partitions: the same layout as the event log
    assert {f.path.split("/")[1] for f in store.offline_impressions.state().files} == {
        "date=1970-01-01",
        "date=1970-01-02",
    }


def test_a_variant_that_drives_users_away_shows_a_lower_rate(db_url, tmp_path):
    """Counted by events alone, the challenger would look better (its one active user clicked:
    100%); counted by exposure, the nine users it was shown to and lost are in the denominator."""
    from experiments.online import variant_stats

    store = _store(db_url, tmp_path)
    imps, clicks = [], []
    for i in range(10):  # production: 10 users shown a list, 5 click
        imps.append(Impression(f"p{i}", f"u{i}", "user", "3", "production:3", 10 + i, ("a", "b")))
        if i % 2 == 0:
            clicks.append(_click(f"u{i}", "b", f"p{i}", f"ep{i}"))
    for i in range(10):  # challenger: 10 users shown a list, 1 clicks, twice over two lists
        imps.append(Impression(f"c{i}", f"v{i}", "user", "4", "challenger:4", 10 + i, ("x", "y")))
    imps.append(Impression("c-again", "v0", "user", "4", "challenger:4", 30, ("y",)))
    clicks += [_click("v0", "x", "c0", "ec0"), _click("v0", "y", "c-again", "ec1")]
    store.add_impressions(imps)
    store.add_events(clicks)
    stats = {s.variant: s for s in variant_stats(store, outcomes=("click",))}
    prod, chal = stats["production:3"], stats["challenger:4"]
    assert (prod.alias, prod.version, prod.users, prod.impressions) == ("production", "3", 10, 10)
    assert (chal.users, chal.impressions) == (10, 11)
    assert prod.rates["click"] == 0.5 and chal.rates["click"] == 0.1
    assert chal.impression_rates["click"] == 2 / 11 and prod.impression_rates["click"] == 0.5
    assert chal.intervals["click"][0] < 0.1 < chal.intervals["click"][1]
    assert chal.intervals["click"][1] < prod.rates["click"]  # credibly lower
    assert prod.metrics()["online_click_impression_rate"] == 0.5


def test_a_store_made_with_the_retired_indexes_drops_them(db_url, tmp_path):
    """Only the indexes a read uses are kept (request_id, ts): a store created while the
    impressions table also indexed user_id and variant drops those when opened, and reads on."""
    from sqlalchemy import inspect, text

    from feature_store.db import RETIRED_INDEXES

    store = _store(db_url, tmp_path)
    with store.engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_impressions_user_id ON impressions (user_id)"))
        conn.execute(text("CREATE INDEX ix_impressions_variant ON impressions (variant)"))
    store.add_impressions([Impression("r1", "u1", "user", "3", "production:3", 1000, ("a", "b"))])
    reopened = FeatureStore(db_url, offline_uri=str(tmp_path / "offline"))
    names = {ix["name"] for ix in inspect(reopened.engine).get_indexes("impressions")}
    assert not names & set(RETIRED_INDEXES["impressions"]) and "ix_impressions_ts" in names
    reopened.add_events([_click("u1", "b", "r1", "e1")])
    (logged,) = reopened.impressions()
    assert logged.clicks == {"click": [1]} and logged.impression.propensities is None
