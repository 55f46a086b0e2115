"""The HTTP API over real uvicorn, a real SQLite store and a real MLflow registry: fold-in,
catalog changes, API keys, validation, version pinning and refused corrupt versions."""

from __future__ import annotations

import uuid

import httpx
import pytest
from harness import live_server, prepare, settings_for, training_config

from feature_store import FeatureStore
from recsys.datasets.synthetic import generate_synthetic

pytestmark = pytest.mark.slow

KEY = "test-key-1"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def server(env, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "server.log"
    with live_server(env, extra_env={"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}, log_path=log) as base:
        yield base


@pytest.fixture(scope="module")
def store(env):
    return FeatureStore(settings_for(env).database_url)


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(n_users=600, n_items=300, n_events=30_000, n_clusters=6, seed=7)


def recs(base, user_id, **params):
    r = httpx.get(f"{base}/users/{user_id}/recommendations", params={"k": 10, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def ids(body):
    return [i["item_id"] for i in body["items"]]


def test_health_ready_metrics(server):
    assert httpx.get(f"{server}/health").json()["model_version"] == "1"
    body = httpx.get(f"{server}/ready").json()
    assert body["status"] == "ready" and body["variants"] == {"production": "1"}
    recs(server, "u1")
    text = httpx.get(f"{server}/metrics").text
    assert "recsys_http_request_duration_seconds_bucket{" in text
    assert 'route="/users/{user_id}/recommendations"' in text
    assert 'recsys_model_version_info{alias="production",version="1"} 1.0' in text


def test_every_answer_names_version_and_variant(server, data):
    item = data.items["item_id"][0]
    for body in (
        recs(server, "u1"),
        httpx.get(f"{server}/items/{item}/similar").json(),
        httpx.post(f"{server}/recommendations", json={"item_ids": [item]}).json(),
    ):
        assert body["model_version"] == "1" and body["variant"] == "production"


def test_user_answer_is_the_documented_schema(server):
    """The user route serializes the Recommender's items directly (no response model built):
    the body is exactly UserRecommendations, field for field."""
    from api.schemas import RecommendedItem, UserRecommendations

    r = httpx.get(f"{server}/users/u1/recommendations", params={"k": 5, "offset": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == list(UserRecommendations.model_fields)  # same fields, same order
    assert all(list(item) == list(RecommendedItem.model_fields) for item in body["items"])
    answer = UserRecommendations.model_validate_json(r.content)
    assert answer.user_id == "u1" and answer.offset == 2 and len(answer.items) == 5
    assert answer.model_dump(mode="json") == body


def test_fold_in_of_new_user_visible_on_next_call(server, data):
    user = f"new-{uuid.uuid4().hex[:8]}"
    assert recs(server, user)["strategy"] == "popular"
    clusters = dict(zip(data.items["item_id"], (a["cluster"] for a in data.items["attributes"])))
    touched = [i for i, c in clusters.items() if c == 2][:8]
    r = httpx.post(
        f"{server}/events", headers=AUTH, json=[{"user_id": user, "item_id": i, "event_type": "click"} for i in touched]
    )
    assert r.status_code == 200 and r.json() == {"received": 8, "inserted": 8, "duplicates": 0}
    body = recs(server, user)
    assert body["strategy"] == "fold_in"
    got = ids(body)
    assert not set(got) & set(touched), "exclude-seen must use the fresh history"
    assert sum(clusters[i] == 2 for i in got) >= 6, "fold-in should follow the fresh events"


def test_known_user_refreshed_and_seen_excluded(server):
    before = ids(recs(server, "u5"))
    r = httpx.post(f"{server}/events", headers=AUTH, json=[{"user_id": "u5", "item_id": i} for i in before[:3]])
    assert r.json()["inserted"] == 3
    body = recs(server, "u5")
    assert body["strategy"] == "fold_in"
    assert not set(ids(body)) & set(before[:3])
    assert len(ids(body)) == 10


def test_events_idempotent_and_counted(server, store):
    batch = [{"event_id": f"dup-{uuid.uuid4().hex}", "user_id": "u9", "item_id": "i3"} for _ in range(3)]
    batch.append(dict(batch[0]))  # duplicate inside the batch
    first = httpx.post(f"{server}/events", headers=AUTH, json=batch).json()
    assert first == {"received": 4, "inserted": 3, "duplicates": 1}
    n = store.count_events()
    again = httpx.post(f"{server}/events", headers=AUTH, json=batch).json()
    assert again == {"received": 4, "inserted": 0, "duplicates": 4}
    assert store.count_events() == n
    one = httpx.post(f"{server}/events", headers=AUTH, json=batch[0]).json()
    assert one == {"received": 1, "inserted": 0, "duplicates": 1}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"user_id": "u1"}, "item_id"),
        ({"user_id": "u1", "item_id": "i1", "value": "lots"}, "value"),
        ({"user_id": "u1", "item_id": "i1", "timestamp": "yesterday"}, "timestamp"),
        ({"user_id": "", "item_id": "i1"}, "user_id"),
        ({"user_id": "u1", "item_id": "i1", "colour": "red"}, "colour"),
    ],
)
def test_malformed_batch_rejected_whole(server, store, bad, field):
    n = store.count_events()
    good = {"event_id": f"ok-{uuid.uuid4().hex}", "user_id": "u1", "item_id": "i1"}
    r = httpx.post(f"{server}/events", headers=AUTH, json=[good, bad])
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == f"[1].{field}", r.json()
    assert store.count_events() == n


def test_unknown_item_event_rejected_nothing_written(server, store):
    n = store.count_events()
    r = httpx.post(
        f"{server}/events",
        headers=AUTH,
        json=[{"user_id": "u1", "item_id": "i1"}, {"user_id": "u1", "item_id": "no-such-item"}],
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "item_id"
    assert store.count_events() == n


def test_unauthorized_writes_rejected_and_nothing_written(server, store):
    n = store.count_events()
    event = {"event_id": f"x-{uuid.uuid4().hex}", "user_id": "u1", "item_id": "i1"}
    for headers, status in (({}, 401), ({"X-API-Key": "wrong"}, 403)):
        r = httpx.post(f"{server}/events", headers=headers, json=event)
        assert r.status_code == status and r.json()["detail"]["field"] == "X-API-Key"
        r = httpx.post(f"{server}/items", headers=headers, json={"item_id": "sneaky", "title": "x"})
        assert r.status_code == status
        r = httpx.delete(f"{server}/items/i1", headers=headers)
        assert r.status_code == status
        r = httpx.post(f"{server}/admin/reload", headers=headers)
        assert r.status_code == status
    assert store.count_events() == n
    assert store.get_item("sneaky") is None and store.get_item("i1")["available"]


def test_deleted_and_unavailable_items_never_returned(server, store, data):
    user = "u12"
    top = ids(recs(server, user))
    gone, off = top[0], top[1]
    assert httpx.delete(f"{server}/items/{gone}", headers=AUTH).json()["available"] is False
    r = httpx.put(f"{server}/items/{off}", headers=AUTH, json={"title": "now unavailable", "available": False})
    assert r.status_code == 200
    assert not store.get_item(off)["available"]
    after = ids(recs(server, user, k=50))
    assert gone not in after and off not in after
    for item in top[2:6]:
        sims = ids(httpx.get(f"{server}/items/{item}/similar", params={"k": 100}).json())
        assert gone not in sims and off not in sims
    pop = ids(recs(server, "nobody-knows-me", k=300))
    assert gone not in pop and off not in pop
    # available again: it may come back
    httpx.put(f"{server}/items/{off}", headers=AUTH, json={"title": "back", "available": True}).raise_for_status()
    assert off in ids(recs(server, "nobody-knows-me", k=300))
    assert httpx.delete(f"{server}/items/no-such-item", headers=AUTH).status_code == 404


def test_business_rules(server, data):
    cats = dict(zip(data.items["item_id"], data.items["categories"]))
    some_cat = data.items["categories"][0][0]
    body = recs(server, "u20", include_category=some_cat, k=5)
    assert ids(body) and all(some_cat in cats[i] for i in ids(body))
    body = recs(server, "u20", exclude_category=some_cat, k=20)
    assert all(some_cat not in cats[i] for i in ids(body))
    page1, page2 = ids(recs(server, "u20", k=10)), ids(recs(server, "u20", k=10, offset=10))
    assert len(page1) == len(page2) == 10 and not set(page1) & set(page2)
    assert ids(recs(server, "u20", k=20))[10:] == page2
    excluded = page1[:2]
    assert not set(ids(recs(server, "u20", exclude_item=excluded))) & set(excluded)
    assert len(ids(recs(server, "u20", diversity=0.3))) == 10
    assert all(i["reason"] for i in recs(server, "u20")["items"])
    r = httpx.get(f"{server}/users/u20/recommendations", params={"include_attr": "no-colon"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "include_attr"


def test_search_and_content_modes_need_encoder(server):
    r = httpx.get(f"{server}/search", params={"q": "anything"})
    assert r.status_code == 503 and "text encoder" in r.json()["detail"]["message"]
    r = httpx.get(f"{server}/users/u1/recommendations", params={"mode": "content"})
    assert r.status_code == 503 and r.json()["detail"]["field"] == "mode"


def test_session_recommendations(server, data):
    items = list(data.items["item_id"][:3])
    body = httpx.post(f"{server}/recommendations", json={"item_ids": items, "weights": [1, 2, 3], "k": 7}).json()
    assert body["strategy"] == "fold_in" and len(body["items"]) == 7 and not set(ids(body)) & set(items)
    r = httpx.post(f"{server}/recommendations", json={"item_ids": items, "weights": [1]})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "weights"


def test_pin_version_and_refuse_corrupt_reload(server, env):
    from pathlib import Path

    from pipelines import tracking
    from pipelines.train import train

    settings = settings_for(env)
    v2 = train(settings, training_config(alias=None, seed=2)).version
    assert v2 == "2"
    # Loading a version that is not loaded yet needs a key; once loaded it is open to readers.
    r = httpx.get(f"{server}/users/u1/recommendations", params={"model_version": "2"})
    assert r.status_code == 401 and r.json()["detail"]["field"] == "X-API-Key"
    assert (
        httpx.get(f"{server}/users/u1/recommendations", params={"model_version": "2"}, headers=AUTH).json()[
            "model_version"
        ]
        == "2"
    )
    assert recs(server, "u1", model_version="2")["model_version"] == "2"
    r = httpx.get(f"{server}/users/u1/recommendations", headers={"X-Model-Version": "2"})
    assert r.json()["model_version"] == "2" and r.json()["variant"] == "pinned"
    assert recs(server, "u1")["model_version"] == "1"
    r = httpx.get(f"{server}/users/u1/recommendations", params={"model_version": "99"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"]["field"] == "model_version"

    # A new version behind the alias whose artifact in the store is corrupt: refused, the old
    # one keeps serving (a corrupt *cached* copy is simply downloaded again: test_serving_safety).
    v3 = train(settings, training_config(alias="production", seed=3)).version
    client = tracking.setup(settings)
    source = Path(tracking.get_version(client, settings.registered_model_name, v3).source.removeprefix("file://"))
    index_file = next(
        p for p in sorted(source.rglob("*")) if p.is_file() and "index_user" in str(p.relative_to(source))
    )
    good = index_file.read_bytes()
    raw = bytearray(good)
    raw[len(raw) // 2] ^= 0xFF
    index_file.write_bytes(bytes(raw))
    r = httpx.post(f"{server}/admin/reload", headers=AUTH, timeout=120)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "alias" and f"version {v3} behind alias 'production' was refused" in detail["message"]
    assert "checksum" in detail["message"] and "(serving production v1)" in detail["message"]
    assert recs(server, "u1")["model_version"] == "1"
    assert httpx.get(f"{server}/health").json()["model_version"] == "1"
    # Repaired in the store: the next reload downloads it again and swaps.
    index_file.write_bytes(good)
    r = httpx.post(f"{server}/admin/reload", headers=AUTH, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["results"]["production"] == {"version": v3, "previous_version": "1", "swapped": True}
    assert recs(server, "u1")["model_version"] == v3
