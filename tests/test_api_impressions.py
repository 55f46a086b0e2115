"""Impressions over the HTTP API (in-process TestClient, real SQLite store and MLflow registry):
every served list answers with a request_id and is logged as an impression; a click that names
it is credited to its position; a full queue drops and counts, never blocks a request."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from harness import prepare, settings_for

from api.impressions import ImpressionLog
from api.main import create_app
from feature_store import FeatureStore
from feature_store.impressions import Impression

KEY = "k"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("imp"), users=200, items=120, events=6_000, iterations=4)


@pytest.fixture(scope="module")
def client(env):
    settings = settings_for(env).model_copy(update={"api_keys": KEY, "reload_poll_seconds": 0})
    with TestClient(create_app(settings)) as c:
        yield c


def _logged(client) -> dict:
    client.app.state.holder.impressions.flush()
    return {x.impression.request_id: x for x in client.app.state.store.impressions()}


def test_every_served_list_is_logged_with_its_request_id(client):
    user = client.get("/users/u1/recommendations", params={"k": 5}).json()
    item = user["items"][0]["item_id"]
    similar = client.get(f"/items/{item}/similar", params={"k": 4, "user_id": "u2"}).json()
    search = client.get("/search", params={"q": "item", "k": 3, "match": "lexical"}).json()
    session = client.post("/recommendations", json={"item_ids": [item], "k": 3, "session_id": "s1"}).json()
    answers = {"user": (user, "u1"), "similar": (similar, "u2"), "search": (search, None), "session": (session, "s1")}
    ids = [a["request_id"] for a, _ in answers.values()]
    assert len(set(ids)) == 4
    logged = _logged(client)
    for surface, (answer, who) in answers.items():
        imp = logged[answer["request_id"]].impression
        assert imp.surface == surface and imp.user_id == who
        assert imp.items == tuple(i["item_id"] for i in answer["items"])  # shown order = positions
        assert imp.model_version == "1" and imp.variant == "production:1"
        assert imp.propensities is None  # no exploration policy: deterministic


def test_click_credited_to_its_impression_and_position(client):
    answer = client.get("/users/u3/recommendations", params={"k": 6}).json()
    third = answer["items"][2]["item_id"]
    # posted before the writer thread stored the impression: credited all the same
    event = {"user_id": "u3", "item_id": third, "event_type": "click", "request_id": answer["request_id"]}
    r = client.post("/events", json=event, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["inserted"] == 1
    logged = _logged(client)[answer["request_id"]]
    assert logged.clicks == {"click": [2]}


def test_logging_off_answers_without_storing(env):
    settings = settings_for(env).model_copy(update={"impressions": False, "reload_poll_seconds": 0})
    with TestClient(create_app(settings)) as c:
        before = len(c.app.state.store.impressions())
        body = c.get("/users/u4/recommendations", params={"k": 3}).json()
        assert body["request_id"] and c.app.state.holder.impressions is None
        assert len(c.app.state.store.impressions()) == before


def _imp(request_id: str, i: int) -> Impression:
    return Impression(request_id, f"u{i}", "user", "1", "production:1", i, ("a",))


def _stalled_log(tmp_path, **sizes) -> tuple[FeatureStore, ImpressionLog, sqlite3.Connection]:
    """A started log over a real SQLite store that another connection holds locked."""
    path = tmp_path / "fs.db"
    store = FeatureStore(f"sqlite:///{path}", offline_uri="")
    log = ImpressionLog(store, flush_seconds=0.01, **sizes)
    log.start()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # the store is stalled: the writer waits on its lock
    return store, log, blocker


def _until_taken(log: ImpressionLog) -> None:
    deadline = time.monotonic() + 5
    while log.pending and time.monotonic() < deadline:  # the writer took it and is now stuck
        time.sleep(0.005)
    assert log.pending == 0


def test_full_queue_drops_and_counts_never_blocks(tmp_path):
    store, log, blocker = _stalled_log(tmp_path, queue_size=3, batch_size=1)
    assert log.record(_imp("r0", 0))
    _until_taken(log)
    start = time.perf_counter()
    accepted = [log.record(_imp(f"r{i}", i)) for i in range(1, 101)]
    elapsed = time.perf_counter() - start
    assert accepted == [True] * 3 + [False] * 97
    assert log.dropped == 97 and log.pending == 3
    assert elapsed < 0.5  # no call waited for the stalled store (each is a put_nowait)
    released = threading.Timer(0.2, blocker.rollback)
    released.start()
    log.stop()  # the writer gets the lock back, then what is queued is stored
    released.join()
    blocker.close()
    stored = {x.impression.request_id for x in store.impressions()}
    assert stored == {"r0", "r1", "r2", "r3"} and log.written == 4


def test_flush_waits_for_the_batch_the_writer_took(tmp_path):
    store, log, blocker = _stalled_log(tmp_path, queue_size=10, batch_size=5)
    for i in range(3):
        assert log.record(_imp(f"f{i}", i))
    _until_taken(log)  # the queue is empty while nothing is stored yet
    released = threading.Timer(0.3, blocker.rollback)
    released.start()
    log.flush()
    assert {x.impression.request_id for x in store.impressions()} == {"f0", "f1", "f2"}
    released.join()
    blocker.close()
    log.stop()


@pytest.mark.slow
def test_impressions_survive_kill_9_up_to_the_last_flushed_batch(env, tmp_path):
    """``kill -9`` of the server: every impression stored by a flush before the kill is there,
    whole; what is lost is at most what was served after the last flush
    (docs/online-evaluation.md, loss bound)."""
    from servers import serve_process

    flush = 0.2
    run_env = {**env, "RECSYS_RELOAD_POLL_SECONDS": "0", "RECSYS_IMPRESSION_FLUSH_SECONDS": str(flush)}
    store = FeatureStore(settings_for(env).database_url, offline_uri="")
    with serve_process(run_env, log_path=tmp_path / "serve.log") as server, httpx.Client(base_url=server.url) as http:

        def serve(n: int, start: int) -> dict[str, list[str]]:
            out = {}
            for i in range(start, start + n):
                body = http.get(f"/users/u{i % 150}/recommendations", params={"k": 5}).json()
                out[body["request_id"]] = [x["item_id"] for x in body["items"]]
            return out

        flushed = serve(60, 0)
        time.sleep(10 * flush)  # several flush intervals: the writer stored all of these
        recent = serve(40, 60)  # served right before the crash: some may still be queued
        server.kill()
    stored = {x.impression.request_id: list(x.impression.items) for x in store.impressions()}
    assert all(stored.get(rid) == items for rid, items in flushed.items())  # none lost, none torn
    for rid, items in recent.items():  # whatever made it is whole
        assert rid not in stored or stored[rid] == items


def test_exploration_logs_each_shown_items_propensity(env):
    settings = settings_for(env).model_copy(
        update={"api_keys": KEY, "reload_poll_seconds": 0, "explore_epsilon": 0.5, "explore_pool": 8}
    )
    eps, pool, k = 0.5, 8, 4
    with TestClient(create_app(settings)) as c:
        # a pinned version is not explored: the deterministic ranking (the exploration pool's order)
        pinned = c.get("/users/u5/recommendations", params={"k": pool, "model_version": "1"}).json()
        assert pinned["propensities"] is None
        top = [i["item_id"] for i in pinned["items"]]
        answers = [c.get("/users/u5/recommendations", params={"k": k}).json() for _ in range(80)]
        logged = _logged(c)
    explored = 0
    for a in answers:
        items = [i["item_id"] for i in a["items"]]
        assert len(items) == k and set(items) <= set(top)
        expected = [(1 - eps) * (item == top[p]) + eps / pool for p, item in enumerate(items)]
        assert a["propensities"] == pytest.approx(expected)
        assert logged[a["request_id"]].impression.propensities == pytest.approx(expected)
        explored += items != top[:k]
    # about half the lists are a random sample of the pool (the other half the top k)
    assert 20 <= explored <= 60
