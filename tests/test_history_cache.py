"""Users' histories served from memory (api/history.py), kept current by the event feed, and the
catalog kept current by each worker's sync thread with writes waiting for every live worker.

In process (TestClient) on a real SQLite store and MLflow registry; the feed's gap handling on
the real PostgreSQL server. A second app instance on the same data plays another replica.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import prepare
from sqlalchemy import text

from api.history import HistoryCache
from api.main import create_app
from feature_store import FeatureStore
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

KEY = "history-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("history"), users=300, items=150, events=8_000, clusters=5)


def make_app(env, **settings):
    values = {
        "data_dir": Path(env["RECSYS_DATA_DIR"]),
        "api_keys": KEY,
        "reload_poll_seconds": 0,
        "history_feed_seconds": 0.1,
        **settings,
    }
    return create_app(Settings(**values))


def recs(client: TestClient, user_id: str, **params) -> dict:
    r = client.get(f"/users/{user_id}/recommendations", params={"k": 10, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def event(user_id: str, item_id: str) -> dict:
    return {"event_id": f"h-{uuid.uuid4().hex}", "user_id": user_id, "item_id": item_id, "event_type": "click"}


def test_event_posted_through_the_api_counts_in_the_next_answer(env):
    with TestClient(make_app(env)) as client:
        before = recs(client, "u7")
        assert before["strategy"] == "collaborative"
        top = ids(before)[0]
        assert client.post("/events", json=event("u7", top), headers=AUTH).status_code == 200
        after = recs(client, "u7")
        assert top not in ids(after)  # seen now
        assert after["strategy"] == "fold_in"  # a fresh event: the user vector is folded in again
        assert top in ids(recs(client, "u7", exclude_seen=False, k=150))


def test_history_carries_event_values_and_the_fold_in_weighs_them(env):
    """The served history keeps each event's value (from the store read and from the feed), and
    a fresh user's answer is the fold-in over those values, as training weighs them."""
    store = FeatureStore(Settings(data_dir=Path(env["RECSYS_DATA_DIR"])).database_url)
    stored = store.user_events("u21")
    with TestClient(make_app(env)) as client:
        recs(client, "u21")  # loads the history from the store
        history = client.app.state.holder.history.get("u21")
        assert history.values == [e.value for e in stored]
        new_items = [i for i in (f"i{n}" for n in range(150)) if i not in set(history.items)][:2]
        for item, value in zip(new_items, (5.0, 0.5)):
            r = client.post("/events", json={**event("u21", item), "value": value}, headers=AUTH)
            assert r.status_code == 200, r.text
        body = recs(client, "u21", mode="collaborative")
        assert body["strategy"] == "fold_in"
        history = client.app.state.holder.history.get("u21")
        assert history.items[-2:] == new_items and history.values[-2:] == [5.0, 0.5]
        recommender = client.app.state.holder.current.recommender
        weighted = recommender.recommend_for_user(
            "u21", history.items, 10, refresh=True, values=history.values, mode="collaborative"
        )
        assert ids(body) == [i.item_id for i in weighted.items]
        np.testing.assert_allclose([i["score"] for i in body["items"]], [i.score for i in weighted.items], rtol=1e-5)
    store.dispose()


def test_a_posted_event_folds_the_user_in_before_their_next_request(env):
    """The fold-in is paid when the events arrive (follow_events), not by the next request: the
    folded vector is in the recommender's cache for exactly the user's new history, and the
    answer is the one the request path would compute."""
    with TestClient(make_app(env)) as client:
        holder = client.app.state.holder
        recommender = holder.current.recommender
        recs(client, "u33")  # trained answer; history now cached
        history = holder.history.get("u33")
        new_item = next(i for i in (f"i{n}" for n in range(150)) if i not in set(history.items))
        assert "u33" not in recommender._fold_cache
        assert client.post("/events", json=event("u33", new_item), headers=AUTH).status_code == 200
        history = holder.history.get("u33")
        assert history.items[-1] == new_item
        seen = recommender.catalog.positions(history.items)
        cached = recommender._fold_cache.get("u33")
        assert cached is not None  # folded in by the POST, before any request
        vector = recommender.user_vector("u33", seen, recommender._known_values(history.items, history.values))
        assert vector is cached[1]  # the request path finds it, no second solve
        body = recs(client, "u33", mode="collaborative")
        assert body["strategy"] == "fold_in" and new_item not in ids(body)
        assert not holder.history.take_changed()  # taken by the POST's follow_events


def test_event_written_by_another_replica_counts_within_the_poll_interval(env):
    store = FeatureStore(Settings(data_dir=Path(env["RECSYS_DATA_DIR"])).database_url)
    with TestClient(make_app(env, history_feed_seconds=0.2)) as client:
        top = ids(recs(client, "u11"))[0]
        assert client.app.state.holder.history.get("u11") is not None  # served from the cache
        store.add_events([event("u11", top)])  # behind this app's back: another replica's write
        written = time.monotonic()
        while top in ids(recs(client, "u11")):
            assert time.monotonic() - written < 5, "the event feed did not bring the other replica's event"
            time.sleep(0.01)
        # a poll interval, plus room for a loaded machine
        assert time.monotonic() - written < 0.2 + 1.5
    store.dispose()


def test_history_cache_is_bounded(env):
    with TestClient(make_app(env, history_cache_users=5)) as client:
        history = client.app.state.holder.history
        for n in range(40):
            recs(client, f"u{n}")
            assert len(history) <= 5
        assert len(history) == 5
        # an evicted user is read again, and the answer is the same as from the cache
        first = recs(client, "u0")
        again = recs(client, "u0")
        assert again.pop("request_id") != first.pop("request_id")  # each served list is its own impression
        assert again == first


def test_cold_miss_reads_the_store_off_the_event_loop(env):
    with TestClient(make_app(env, history_cache_users=3)) as client:
        store = client.app.state.store
        history = client.app.state.holder.history
        reads: list[tuple[str, bool]] = []
        real = store.user_events

        def user_events(user_id):
            try:
                asyncio.get_running_loop()
                on_loop = True
            except RuntimeError:
                on_loop = False
            reads.append((threading.current_thread().name, on_loop))
            return real(user_id)

        store.user_events = user_events
        user = next(f"u{n}" for n in range(200, 300) if f"u{n}" not in history._users)
        recs(client, user)
        assert len(reads) == 1, "a miss is one store read"
        thread, on_loop = reads[0]
        assert not on_loop, f"the store was read on the event loop (thread {thread})"
        recs(client, user)
        assert len(reads) == 1, "the second request is served from memory"


def test_item_deleted_through_one_instance_is_never_returned_by_another(env):
    with TestClient(make_app(env)) as a, TestClient(make_app(env)) as b:
        users = [f"u{n}" for n in range(1, 60, 7)]
        victim = ids(recs(b, users[0]))[0]
        neighbour = ids(b.get(f"/items/{victim}/similar", params={"k": 5}).json())[0]
        assert victim in ids(b.get(f"/items/{neighbour}/similar", params={"k": 150}).json())
        started = time.monotonic()
        assert a.delete(f"/items/{victim}", headers=AUTH).status_code == 200
        waited = time.monotonic() - started
        # b's very next answers, for every user and the similar list
        for user_id in users:
            assert victim not in ids(recs(b, user_id, k=150))
        assert victim not in ids(b.get(f"/items/{neighbour}/similar", params={"k": 150}).json())
        assert waited < 5, "the write waited for the other instance longer than catalog_wait_seconds"
        b_holder = b.app.state.holder
    # b is gone (it left serving_workers): a's writes don't wait for it
    with TestClient(make_app(env, catalog_wait_seconds=30)) as a:
        assert b_holder.worker_id not in a.app.state.holder.control.workers_behind(10**9, 0)
        started = time.monotonic()
        assert a.put(f"/items/{victim}", json={"title": "back", "available": True}, headers=AUTH).status_code == 200
        assert time.monotonic() - started < 5


def test_catalog_write_waits_for_a_live_worker_then_gives_up(env):
    with TestClient(make_app(env, catalog_wait_seconds=0.5)) as a:
        # a worker that reports itself alive but never applies anything (a stalled sync thread)
        control = a.app.state.holder.control
        control.report_worker("stalled-worker", 0, time.time())
        started = time.monotonic()
        assert a.put("/items/i3", json={"title": "three"}, headers=AUTH).status_code == 200
        assert 0.5 <= time.monotonic() - started < 5
        control.remove_worker("stalled-worker")


def test_a_miss_read_racing_the_feed_counts_each_event_once(env):
    store = FeatureStore(Settings(data_dir=Path(env["RECSYS_DATA_DIR"])).database_url)
    cache = HistoryCache(store, 10)
    real = store.user_events
    raced = []

    def stale_read(user_id):  # the read happens, then an event lands and the feed applies it
        rows = real(user_id)
        store.add_events([event(user_id, "i1")])
        raced.append(cache.poll())
        return rows

    store.user_events = stale_read
    n_stored = len(real("u21"))
    loaded = cache.load("u21")
    assert raced == [1]
    assert len(loaded.items) == n_stored + 1  # replayed from the feed

    def fresh_read(user_id):  # the event lands before the read; the feed applies it afterwards
        store.add_events([event(user_id, "i2")])
        return real(user_id)

    store.user_events = fresh_read
    cache._users.clear()
    loaded = cache.load("u21")
    assert cache.poll() == 1
    assert len(loaded.items) == n_stored + 2  # not twice
    store.dispose()


@pytest.mark.postgres
def test_feed_picks_up_an_event_committed_after_a_later_one(postgres_url):
    """PostgreSQL hands out ids at insert: a lower id can become visible after a higher one."""
    store = FeatureStore(postgres_url)
    store.upsert_items([{"item_id": f"i{n}"} for n in range(3)])
    store.add_events([event("u1", "i0")])
    cache = HistoryCache(store, 10)
    assert cache.load("u1").items == ["i0"]
    with store.engine.connect() as slow:  # a writer that took its id first and commits last
        slow.execute(
            text(
                "INSERT INTO events (event_id, user_pk, item_pk, event_type, value, ts) "
                "SELECT 'slow-1', u.id, i.id, 'click', 1.0, 0 FROM users u, items i "
                "WHERE u.user_id = 'u1' AND i.item_id = 'i1'"
            )
        )
        store.add_events([event("u1", "i2")])
        assert cache.poll() == 1
        assert cache.get("u1").items == ["i0", "i2"]
        slow.commit()
    assert cache.poll() == 1
    assert sorted(cache.get("u1").items) == ["i0", "i1", "i2"]
    assert cache.poll() == 0
    store.dispose()
