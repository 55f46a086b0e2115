"""The HTTP API in process (TestClient over the real app), a real SQLite store and a real MLflow
registry: fold-in, catalog changes, API keys, validation, version pinning and refused corrupt
versions. (Server-process behaviour — workers, signals, replicas — is in test_api_load.py,
test_serving_safety.py and test_replicas.py.)"""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from harness import prepare, settings_for, training_config

from api.main import create_app
from feature_store import FeatureStore
from recsys.datasets.synthetic import generate_synthetic
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

KEY = "test-key-1"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("api"))


@pytest.fixture(scope="module")
def api(env) -> TestClient:
    base = settings_for(env)
    settings = Settings(data_dir=base.data_dir, database_url=base.database_url, api_keys=KEY, reload_poll_seconds=0)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def store(env):
    return FeatureStore(settings_for(env).database_url)


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(n_users=600, n_items=300, n_events=30_000, n_clusters=6, seed=7)


def recs(client: TestClient, user_id, **params):
    r = client.get(f"/users/{user_id}/recommendations", params={"k": 10, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ids(body):
    return [i["item_id"] for i in body["items"]]


def test_health_ready_metrics(api):
    assert api.get("/health").json()["model_version"] == "1"
    body = api.get("/ready").json()
    assert body["status"] == "ready" and body["variants"] == {"production": "1"}
    recs(api, "u1")
    text = api.get("/metrics").text
    assert "recsys_http_request_duration_seconds_bucket{" in text
    assert 'route="/users/{user_id}/recommendations"' in text
    assert 'recsys_model_version_info{alias="production",version="1"} 1.0' in text


def test_every_answer_names_version_and_variant(api, data):
    item = data.items["item_id"][0]
    for body in (
        recs(api, "u1"),
        api.get(f"/items/{item}/similar").json(),
        api.post("/recommendations", json={"item_ids": [item]}).json(),
    ):
        assert body["model_version"] == "1" and body["variant"] == "production"


def test_user_answer_is_the_documented_schema(api):
    """The user route serializes the Recommender's items directly (no response model built):
    the body is exactly UserRecommendations, field for field."""
    from api.schemas import RecommendedItem, UserRecommendations

    r = api.get("/users/u1/recommendations", params={"k": 5, "offset": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert list(body) == list(UserRecommendations.model_fields)  # same fields, same order
    assert all(list(item) == list(RecommendedItem.model_fields) for item in body["items"])
    answer = UserRecommendations.model_validate_json(r.content)
    assert answer.user_id == "u1" and answer.offset == 2 and len(answer.items) == 5
    assert answer.model_dump(mode="json") == body


def test_fold_in_of_new_user_visible_on_next_call(api, data):
    user = f"new-{uuid.uuid4().hex[:8]}"
    assert recs(api, user)["strategy"] == "popular"
    clusters = dict(zip(data.items["item_id"], (a["cluster"] for a in data.items["attributes"])))
    touched = [i for i, c in clusters.items() if c == 2][:8]
    r = api.post(
        "/events", headers=AUTH, json=[{"user_id": user, "item_id": i, "event_type": "click"} for i in touched]
    )
    assert r.status_code == 200 and r.json() == {"received": 8, "inserted": 8, "duplicates": 0}
    body = recs(api, user)
    assert body["strategy"] == "fold_in"
    got = ids(body)
    assert not set(got) & set(touched), "exclude-seen must use the fresh history"
    assert sum(clusters[i] == 2 for i in got) >= 6, "fold-in should follow the fresh events"


def test_known_user_refreshed_and_seen_excluded(api):
    before = ids(recs(api, "u5"))
    r = api.post("/events", headers=AUTH, json=[{"user_id": "u5", "item_id": i} for i in before[:3]])
    assert r.json()["inserted"] == 3
    body = recs(api, "u5")
    assert body["strategy"] == "fold_in"
    assert not set(ids(body)) & set(before[:3])
    assert len(ids(body)) == 10


def test_events_idempotent_and_counted(api, store):
    batch = [{"event_id": f"dup-{uuid.uuid4().hex}", "user_id": "u9", "item_id": "i3"} for _ in range(3)]
    batch.append(dict(batch[0]))  # duplicate inside the batch
    first = api.post("/events", headers=AUTH, json=batch).json()
    assert first == {"received": 4, "inserted": 3, "duplicates": 1}
    n = store.count_events()
    again = api.post("/events", headers=AUTH, json=batch).json()
    assert again == {"received": 4, "inserted": 0, "duplicates": 4}
    assert store.count_events() == n
    one = api.post("/events", headers=AUTH, json=batch[0]).json()
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
def test_malformed_batch_rejected_whole(api, store, bad, field):
    n = store.count_events()
    good = {"event_id": f"ok-{uuid.uuid4().hex}", "user_id": "u1", "item_id": "i1"}
    r = api.post("/events", headers=AUTH, json=[good, bad])
    assert r.status_code == 422
    assert r.json()["detail"]["field"] == f"[1].{field}", r.json()
    assert store.count_events() == n


def test_unknown_item_event_rejected_nothing_written(api, store):
    n = store.count_events()
    r = api.post(
        "/events",
        headers=AUTH,
        json=[{"user_id": "u1", "item_id": "i1"}, {"user_id": "u1", "item_id": "no-such-item"}],
    )
    assert r.status_code == 422 and r.json()["detail"]["field"] == "item_id"
    assert store.count_events() == n


def test_unauthorized_writes_rejected_and_nothing_written(api, store):
    n = store.count_events()
    event = {"event_id": f"x-{uuid.uuid4().hex}", "user_id": "u1", "item_id": "i1"}
    for headers, status in (({}, 401), ({"X-API-Key": "wrong"}, 403)):
        r = api.post("/events", headers=headers, json=event)
        assert r.status_code == status and r.json()["detail"]["field"] == "X-API-Key"
        r = api.post("/items", headers=headers, json={"item_id": "sneaky", "title": "x"})
        assert r.status_code == status
        r = api.delete("/items/i1", headers=headers)
        assert r.status_code == status
        r = api.post("/admin/reload", headers=headers)
        assert r.status_code == status
    assert store.count_events() == n
    assert store.get_item("sneaky") is None and store.get_item("i1")["available"]


def test_deleted_and_unavailable_items_never_returned(api, store, data):
    user = "u12"
    top = ids(recs(api, user))
    gone, off = top[0], top[1]
    assert api.delete(f"/items/{gone}", headers=AUTH).json()["available"] is False
    r = api.put(f"/items/{off}", headers=AUTH, json={"title": "now unavailable", "available": False})
    assert r.status_code == 200
    assert not store.get_item(off)["available"]
    after = ids(recs(api, user, k=50))
    assert gone not in after and off not in after
    for item in top[2:6]:
        sims = ids(api.get(f"/items/{item}/similar", params={"k": 100}).json())
        assert gone not in sims and off not in sims
    pop = ids(recs(api, "nobody-knows-me", k=300))
    assert gone not in pop and off not in pop
    # available again: it may come back
    api.put(f"/items/{off}", headers=AUTH, json={"title": "back", "available": True}).raise_for_status()
    assert off in ids(recs(api, "nobody-knows-me", k=300))
    assert api.delete("/items/no-such-item", headers=AUTH).status_code == 404


def test_business_rules(api, data):
    cats = dict(zip(data.items["item_id"], data.items["categories"]))
    some_cat = data.items["categories"][0][0]
    body = recs(api, "u20", include_category=some_cat, k=5)
    assert ids(body) and all(some_cat in cats[i] for i in ids(body))
    body = recs(api, "u20", exclude_category=some_cat, k=20)
    assert all(some_cat not in cats[i] for i in ids(body))
    page1, page2 = ids(recs(api, "u20", k=10)), ids(recs(api, "u20", k=10, offset=10))
    assert len(page1) == len(page2) == 10 and not set(page1) & set(page2)
    assert ids(recs(api, "u20", k=20))[10:] == page2
    excluded = page1[:2]
    assert not set(ids(recs(api, "u20", exclude_item=excluded))) & set(excluded)
    assert len(ids(recs(api, "u20", diversity=0.3))) == 10
    assert all(i["reason"] for i in recs(api, "u20")["items"])
    r = api.get("/users/u20/recommendations", params={"include_attr": "no-colon"})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "include_attr"


def test_search_and_content_modes_need_encoder(api):
    r = api.get("/search", params={"q": "anything"})
    assert r.status_code == 503 and "text encoder" in r.json()["detail"]["message"]
    r = api.get("/users/u1/recommendations", params={"mode": "content"})
    assert r.status_code == 503 and r.json()["detail"]["field"] == "mode"


def test_session_recommendations(api, data):
    items = list(data.items["item_id"][:3])
    body = api.post("/recommendations", json={"item_ids": items, "weights": [1, 2, 3], "k": 7}).json()
    assert body["strategy"] == "fold_in" and len(body["items"]) == 7 and not set(ids(body)) & set(items)
    r = api.post("/recommendations", json={"item_ids": items, "weights": [1]})
    assert r.status_code == 422 and r.json()["detail"]["field"] == "weights"


def test_pin_version_and_refuse_corrupt_reload(api, env):
    from pathlib import Path

    from pipelines import tracking
    from pipelines.train import train

    settings = settings_for(env)
    v2 = train(settings, training_config(alias=None, seed=2)).version
    assert v2 == "2"
    # Loading a version that is not loaded yet needs a key; once loaded it is open to readers.
    r = api.get("/users/u1/recommendations", params={"model_version": "2"})
    assert r.status_code == 401 and r.json()["detail"]["field"] == "X-API-Key"
    assert (
        api.get("/users/u1/recommendations", params={"model_version": "2"}, headers=AUTH).json()["model_version"] == "2"
    )
    assert recs(api, "u1", model_version="2")["model_version"] == "2"
    r = api.get("/users/u1/recommendations", headers={"X-Model-Version": "2"})
    assert r.json()["model_version"] == "2" and r.json()["variant"] == "pinned"
    assert recs(api, "u1")["model_version"] == "1"
    r = api.get("/users/u1/recommendations", params={"model_version": "99"}, headers=AUTH)
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
    r = api.post("/admin/reload", headers=AUTH)
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert detail["field"] == "alias" and f"version {v3} behind alias 'production' was refused" in detail["message"]
    assert "checksum" in detail["message"] and "(serving production v1)" in detail["message"]
    assert recs(api, "u1")["model_version"] == "1"
    assert api.get("/health").json()["model_version"] == "1"
    # Repaired in the store: the next reload downloads it again and swaps.
    index_file.write_bytes(good)
    r = api.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["results"]["production"] == {"version": v3, "previous_version": "1", "swapped": True}
    assert recs(api, "u1")["model_version"] == v3
