"""What an API user meets first, in-process (TestClient) over a real SQLite store and MLflow
registry: the one error body of every error answer and its OpenAPI declaration, the keyless
server's warning and 401, ``GET /users/{user_id}/events``, the opt-in creation of unknown items
from events, honest reasons for items nobody interacted with, and descriptions written for
API users."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from harness import prepare

from api.errors import Error
from api.keys import KEY_CACHE_SECONDS
from api.main import create_app
from feature_store import FeatureStore
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

KEY = "surface-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("surface")
    prepare(path, users=200, items=80, events=5000, clusters=4, factors=8, iterations=3, content="tfidf")
    return path


def _client(data_dir, **settings) -> TestClient:
    return TestClient(create_app(Settings(data_dir=data_dir, reload_poll_seconds=0, **settings)))


@pytest.fixture(scope="module")
def client(data_dir):
    with _client(data_dir, api_keys=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def store(data_dir):
    s = FeatureStore(Settings(data_dir=data_dir).database_url)
    yield s
    s.dispose()


def _error(r, status: int, field: str | None) -> dict:
    """The body of an error answer: the one shape (validated by its model), naming ``field``."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    Error.model_validate(body)
    detail = body["detail"]
    assert set(detail) == {"field", "message", "errors"} and detail["errors"], body
    assert detail["field"] == field and detail["errors"][0]["field"] == field, body
    assert detail["message"] and all(e["message"] and e["type"] for e in detail["errors"]), body
    return detail


# ---- one error body ------------------------------------------------------------------------------
def test_every_error_answer_has_the_one_body_naming_the_field(client, store):
    item = store.items_frame()["item_id"].iloc[0]
    event = {"event_id": "surface-e1", "user_id": "surface-u", "item_id": item}
    assert client.post("/events", json=event, headers=AUTH).status_code == 200
    cases = [
        # (request, status, field, error type)
        (("POST", "/events", {"json": event}), 401, "X-API-Key", "key_required"),
        (("POST", "/events", {"json": event, "headers": {"X-API-Key": "wrong"}}), 403, "X-API-Key", "key_invalid"),
        (("GET", "/items/no-such-item", {}), 404, "item_id", "not_found"),
        (("GET", "/users/no-such-user", {}), 404, "user_id", "not_found"),
        (("GET", "/items/no-such-item/similar", {}), 404, "item_id", "not_found"),
        (("DELETE", "/items/no-such-item", {"headers": AUTH}), 404, "item_id", "not_found"),
        (
            ("GET", "/users/u1/recommendations", {"params": {"model_version": "999"}, "headers": AUTH}),
            404,
            "model_version",
            "not_found",
        ),
        (("POST", "/admin/reload", {"params": {"alias": "nosuch"}, "headers": AUTH}), 404, "alias", "not_found"),
        (("GET", "/no/such/route", {}), 404, None, "not_found"),
        (("POST", "/events", {"json": {**event, "value": 2.0}, "headers": AUTH}), 409, "event_id", "conflict"),
        (("GET", "/users/u1/recommendations", {"params": {"k": 5000}}), 422, "k", "less_than_equal"),
        (("GET", "/users/u1/recommendations", {"params": {"cf_weight": 1}}), 422, "content_weight", "invalid"),
        (("GET", "/items/i1/similar", {"params": {"include_attr": "nocolon"}}), 422, "include_attr", "invalid"),
        (("GET", "/users/u%00x", {}), 422, "user_id", "id_invalid"),
        (("POST", "/events", {"json": [event, {"user_id": "u1"}], "headers": AUTH}), 422, "[1].item_id", "missing"),
        (
            ("POST", "/events", {"json": {"user_id": "u1", "item_id": "not-in-catalog"}, "headers": AUTH}),
            422,
            "item_id",
            "invalid",
        ),
        (
            ("POST", "/items", {"json": {"item_id": "n1", "attributes": {"y": []}}, "headers": AUTH}),
            422,
            "attributes.y",
            None,
        ),
        (
            ("POST", "/recommendations", {"content": b"{", "headers": {"content-type": "application/json"}}),
            422,
            None,
            "json_invalid",
        ),
        (
            (
                "POST",
                "/users",
                {"content": b" " * (16 * 1024 * 1024 + 1), "headers": {**AUTH, "content-type": "application/json"}},
            ),
            413,
            "body",
            "body_too_large",
        ),
    ]
    for (method, path, kwargs), status, field, kind in cases:
        r = client.request(method, path, **kwargs)
        if kind == "json_invalid":  # the parser names the position it stopped at
            assert r.status_code == 422 and r.json()["detail"]["errors"][0]["type"] == kind, r.text
            Error.model_validate(r.json())
            continue
        detail = _error(r, status, field)
        if kind is not None:
            assert detail["errors"][0]["type"] == kind, (path, detail)
    # the location is named with the field: path, query, header or body
    assert _error(client.post("/events", json=event), 401, "X-API-Key")["errors"][0]["location"] == "header"
    assert _error(client.get("/items/no-such-item"), 404, "item_id")["errors"][0]["location"] == "path"
    r = client.get("/users/u%00x/recommendations", params={"k": 0}, headers={"X-Model-Version": "x"})
    detail = _error(r, 422, "user_id")
    assert {(e["location"], e["field"]) for e in detail["errors"]} == {
        ("path", "user_id"),
        ("query", "k"),
        ("header", "x-model-version"),
    }
    assert "(and 2 more problems, listed in errors)" in detail["message"]
    assert [e.get("input") for e in detail["errors"] if e["field"] == "k"] == ["0"]


def test_the_error_body_is_what_openapi_declares(client):
    spec = client.app.openapi()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["Error"]
    assert error["properties"]["detail"]["$ref"].endswith("/ErrorDetail")
    assert "Every error answer" in spec["info"]["description"]
    undeclared = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if not status.startswith(("4", "5")):
                    continue
                content = response.get("content", {})
                if status == "400":  # answered by the HTTP server itself, before the app
                    assert "text/plain" in content
                    continue
                schema = content.get("application/json", {}).get("schema", {})
                if schema.get("$ref") != "#/components/schemas/Error":
                    undeclared.append(f"{method.upper()} {path} {status}")
            if op.get("parameters") or op.get("requestBody"):
                assert "422" in op["responses"], (method, path)
    assert not undeclared, undeclared


def test_the_dashboard_reads_an_error_as_the_api_names_it(client):
    """The user page shows the message the API answers for the same query."""
    api = client.get("/users/u1/recommendations", params={"cf_weight": 1, "mode": "hybrid"}).json()
    page = client.get("/ui/users/u1", params={"cf_weight": 1, "mode": "hybrid"})
    assert api["detail"]["message"] == "give both cf_weight and content_weight"
    assert api["detail"]["message"] in page.text
    script = client.get("/ui/static/ui.js").text
    assert "detail.message" in script  # the admin buttons read the same field


# ---- a server without keys -----------------------------------------------------------------------
def test_a_server_without_keys_warns_at_start_and_its_401_says_how_to_add_one(data_dir, store, caplog):
    caplog.set_level(logging.WARNING, logger="api.main")
    with _client(data_dir) as keyless:
        warnings = [r.getMessage() for r in caplog.records if r.name == "api.main"]
        assert any("no API key configured" in w and "RECSYS_API_KEYS" in w for w in warnings), warnings
        r = keyless.post("/events", json={"user_id": "u1", "item_id": "i1"})
        detail = _error(r, 401, "X-API-Key")
        assert "no API key configured" in detail["message"] and "python -m api.keys create" in detail["message"]
        # a key stored while it runs is accepted at once, and the 401 becomes the usual one
        key = store.create_api_key("surface-late")
        try:
            item = store.items_frame()["item_id"].iloc[1]
            ok = keyless.post("/events", json={"user_id": "u1", "item_id": item}, headers={"X-API-Key": key})
            assert ok.status_code == 200, ok.text
            time.sleep(KEY_CACHE_SECONDS)  # the "no stored key" answer is trusted this long
            again = _error(keyless.post("/events", json={}), 401, "X-API-Key")
            assert again["message"] == "an API key is required (header X-API-Key)"
        finally:
            store.revoke_api_keys("surface-late")
    caplog.clear()
    with _client(data_dir, api_keys=KEY) as keyed:
        assert not [r for r in caplog.records if "no API key configured" in r.getMessage()]
        assert _error(keyed.post("/events", json={}), 401, "X-API-Key")["message"].startswith("an API key is required")


# ---- a user's events -----------------------------------------------------------------------------
def test_user_events_newest_first_in_pages(client, store):
    items = store.items_frame()["item_id"].tolist()[:5]
    start = datetime(2031, 1, 1, tzinfo=UTC)
    events = [
        {
            "event_id": f"hist-{i}",
            "user_id": "hist-user",
            "item_id": items[i],
            "event_type": "click",
            "value": float(i),
            "timestamp": (start + timedelta(hours=i)).isoformat(),
        }
        for i in range(5)
    ]
    assert client.post("/events", json=events, headers=AUTH).json()["inserted"] == 5
    first = client.get("/users/hist-user/events", params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["total"], body["offset"], body["limit"]) == (5, 0, 2)
    assert [e["event_id"] for e in body["events"]] == ["hist-4", "hist-3"]
    assert body["events"][0]["item_id"] == items[4] and body["events"][0]["value"] == 4.0
    assert datetime.fromisoformat(body["events"][0]["timestamp"].replace("Z", "+00:00")) == start + timedelta(hours=4)
    pages = [
        client.get("/users/hist-user/events", params={"limit": 2, "offset": o}).json()["events"] for o in (0, 2, 4)
    ]
    assert [e["event_id"] for page in pages for e in page] == [f"hist-{i}" for i in range(4, -1, -1)]
    assert client.get("/users/hist-user/events", params={"offset": 5}).json()["events"] == []
    # a known user with no events: an empty page; an unknown one: 404; a bad page: 422
    assert client.post("/users", json={"user_id": "quiet-user"}, headers=AUTH).status_code == 201
    assert client.get("/users/quiet-user/events").json() == {
        "user_id": "quiet-user",
        "total": 0,
        "offset": 0,
        "limit": 50,
        "events": [],
    }
    _error(client.get("/users/nobody-at-all/events"), 404, "user_id")
    _error(client.get("/users/hist-user/events", params={"limit": 0}), 422, "limit")
    _error(client.get("/users/hist-user/events", params={"offset": -1}), 422, "offset")
    assert "/users/{user_id}/events" in client.app.openapi()["paths"]


def test_reads_key_rule_covers_user_events(data_dir):
    with _client(data_dir, api_keys=KEY, reads_require_key=True) as c:
        _error(c.get("/users/u1/events"), 401, "X-API-Key")
        assert c.get("/users/u1/events", headers=AUTH).status_code == 200


# ---- unknown items from events -------------------------------------------------------------------
def test_unknown_items_are_refused_unless_the_setting_creates_them(data_dir, store):
    assert Settings().create_unknown_items is False
    batch = [
        {"event_id": "auto-1", "user_id": "auto-user", "item_id": "auto-new-1"},
        {"event_id": "auto-2", "user_id": "auto-user", "item_id": store.items_frame()["item_id"].iloc[0]},
    ]
    with _client(data_dir, api_keys=KEY) as off:
        detail = _error(off.post("/events", json=batch, headers=AUTH), 422, "item_id")
        assert "'auto-new-1'" in detail["message"]
    assert store.get_item("auto-new-1") is None and store.user_timeline("auto-user") == ([], 0)
    with _client(data_dir, api_keys=KEY, create_unknown_items=True) as on:
        assert on.post("/events", json=batch, headers=AUTH).json() == {"received": 2, "inserted": 2, "duplicates": 0}
        item = on.get("/items/auto-new-1").json()
        assert item == {
            "item_id": "auto-new-1",
            "title": "",
            "description": "",
            "categories": [],
            "attributes": {},
            "available": True,
        }
        stored = on.get("/users/auto-user/events").json()["events"]
        assert {e["item_id"] for e in stored} == {batch[1]["item_id"], "auto-new-1"}
        # an item created this way keeps a catalog entry written later (no blanking on resend)
        assert on.put("/items/auto-new-1", json={"title": "Named later"}, headers=AUTH).status_code == 200
        assert (
            on.post("/events", json={"user_id": "auto-user", "item_id": "auto-new-1"}, headers=AUTH).status_code == 200
        )
        assert store.get_item("auto-new-1")["title"] == "Named later"
        # still all or nothing: a conflict in the batch stores neither the event nor the item
        clash = [{"event_id": "auto-1", "user_id": "someone-else", "item_id": "auto-new-2"}]
        _error(on.post("/events", json=clash, headers=AUTH), 409, "event_id")
        assert store.get_item("auto-new-2") is None


# ---- honest reasons ------------------------------------------------------------------------------
def test_a_new_item_is_explained_by_its_text_never_by_other_users(client, store):
    original = store.items_frame().iloc[0]
    new = {
        "item_id": "fresh-copy",
        "title": original["title"],
        "description": original["description"],
        "categories": ["brand-new"],
    }
    assert client.post("/items", json=new, headers=AUTH).status_code == 201
    similar = client.get("/items/fresh-copy/similar", params={"mode": "collaborative", "k": 5}).json()
    assert similar["items"] and {i["reason"] for i in similar["items"]} == {"similar text"}
    # an established item next to the new one: the new one is explained by its text
    around = client.get(f"/items/{original['item_id']}/similar", params={"mode": "collaborative", "k": 80}).json()
    reasons = {i["item_id"]: i["reason"] for i in around["items"]}
    assert reasons["fresh-copy"] == "similar text"
    assert "liked by the same users" in set(reasons.values()) - {reasons["fresh-copy"]}
    # in a user's list: "similar text to <one of their items>", not "because you interacted with"
    session = client.post(
        "/recommendations",
        json={
            "item_ids": [original["item_id"]],
            "k": 5,
            "mode": "collaborative",
            "filters": {"include_categories": ["brand-new"]},
        },
    ).json()
    assert [i["item_id"] for i in session["items"]] == ["fresh-copy"]
    assert session["items"][0]["reason"].startswith("similar text to "), session


# ---- descriptions for API users ------------------------------------------------------------------
INTERNAL = re.compile(r"``async``|on purpose|api/\w+\.py|bench/|py-spy|thread pool|event loop|dependency solver")


def test_operation_descriptions_are_written_for_api_users(client):
    spec = client.app.openapi()
    texts = [spec["info"]["description"]]
    for ops in spec["paths"].values():
        for op in ops.values():
            texts += [op.get("summary", ""), op.get("description", "")]
            texts += [p.get("description", "") for p in op.get("parameters", [])]
    undescribed = [f"{m} {p}" for p, ops in spec["paths"].items() for m, op in ops.items() if not op.get("description")]
    assert not undescribed, undescribed
    leaks = [t for t in texts if INTERNAL.search(t)]
    assert not leaks, json.dumps(leaks, indent=1)
    user = spec["paths"]["/users/{user_id}/recommendations"]["get"]
    assert user["description"].startswith("Top-k items for a user")
