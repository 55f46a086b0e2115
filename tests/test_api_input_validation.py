"""Hostile HTTP input never answers 5xx and is never stored: non-finite numbers, lone surrogates,
NUL and '/' in ids, oversized bodies and batches, made-up HTTP methods. Every case runs through the
real app (in-process TestClient) on SQLite and on PostgreSQL, bodies sent as raw bytes because
``json.dumps`` itself refuses most of them."""

from __future__ import annotations

import json
import math
import re

import anyio
import pytest
from fastapi.testclient import TestClient
from hostile_input import assert_stored_values_valid, mutated, raw_json
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api.main import create_app
from api.request_guards import MAX_ERRORS
from feature_store import FeatureStore
from recsys import validation
from recsys.datasets.base import DatasetError
from recsys.settings import Settings

KEY = "validation-key"
JSON = {"X-API-Key": KEY, "content-type": "application/json"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    # An empty registry (no model: write routes work, model reads answer 503), created once:
    # MLflow's table migrations take seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(db_url):
    store = FeatureStore(db_url)
    store.upsert_items([{"item_id": "i1", "title": "one"}, {"item_id": "i2", "title": "two"}])
    store.upsert_users([{"user_id": "u1"}])
    store.add_events([{"event_id": "e1", "user_id": "u1", "item_id": "i1"}])
    yield store
    store.dispose()


def _client(db_url: str, mlflow_uri: str, tmp_path, **settings) -> TestClient:
    return TestClient(
        create_app(
            Settings(
                data_dir=tmp_path,
                database_url=db_url,
                mlflow_tracking_uri=mlflow_uri,
                api_keys=KEY,
                reload_poll_seconds=0,
                **settings,
            )
        )
    )


@pytest.fixture
def client(db_url, mlflow_uri, store, tmp_path):
    with _client(db_url, mlflow_uri, tmp_path) as client:
        yield client


def _contents(store: FeatureStore) -> tuple:
    data = store.snapshot()
    return (
        sorted(data.events["event_id"]),
        sorted(data.items["item_id"]),
        sorted(data.users["user_id"]),
        [json.dumps(a, sort_keys=True) for a in data.items.sort_values("item_id")["attributes"]],
        [json.dumps(a, sort_keys=True) for a in data.users.sort_values("user_id")["attributes"]],
    )


def _named_fields(body: dict) -> set[str]:
    """Every field an error body names, and each part of their dotted paths."""
    detail = body["detail"]
    fields = {detail["field"], *(e["field"] for e in detail["errors"])} - {None}
    return fields | {part for f in fields for part in re.split(r"[.\[\]]+", f) if part}


EVENT = '{"user_id": "u1", "item_id": "i1", %s}'

# (method, path, raw body, field the answer must name)
CASES = [
    ("POST", "/events", EVENT % '"value": NaN', "value"),
    ("POST", "/events", EVENT % '"value": Infinity', "value"),
    ("POST", "/events", EVENT % '"value": -Infinity', "value"),
    ("POST", "/events", EVENT % '"value": 1e400', "value"),
    ("POST", "/events", EVENT % '"value": -1e400', "value"),
    ("POST", "/events", EVENT % '"timestamp": NaN', "timestamp"),
    ("POST", "/events", "[" + EVENT % '"value": 1' + ", " + EVENT % '"value": NaN' + "]", "value"),
    ("POST", "/events", '{"user_id": "\\ud800", "item_id": "i1"}', "user_id"),
    ("POST", "/events", '{"user_id": "u1", "item_id": "i1", "event_type": "a\\udc00"}', "event_type"),
    ("POST", "/events", '{"user_id": "u\\u0000x", "item_id": "i1"}', "user_id"),
    ("POST", "/events", '{"user_id": "u1", "item_id": "i\\u0000"}', "item_id"),
    ("POST", "/events", '{"user_id": "a/b", "item_id": "i1"}', "user_id"),
    ("POST", "/events", '{"event_id": "e/2", "user_id": "u1", "item_id": "i1"}', "event_id"),
    ("POST", "/events", EVENT % ('"value": 1' + "1" * 5000), "value"),
    ("POST", "/items", '{"item_id": "u\\u0000x"}', "item_id"),
    ("POST", "/items", '{"item_id": "a/b"}', "item_id"),
    ("POST", "/items", '{"item_id": "\\udfff"}', "item_id"),
    ("POST", "/items", '{"item_id": "n1", "attributes": {"price": NaN}}', "price"),
    ("POST", "/items", '{"item_id": "n1", "attributes": {"price": Infinity}}', "price"),
    ("POST", "/items", '{"item_id": "n1", "attributes": {"price": 1e400}}', "price"),
    ("POST", "/items", '{"item_id": "n1", "attributes": {"big": 1%s}}' % ("0" * 400), "big"),
    ("POST", "/items", '{"item_id": "n1", "attributes": {"k\\ud800": 1}}', "attributes"),
    ("POST", "/items", '{"item_id": "n1", "title": "t\\ud800"}', "title"),
    ("POST", "/items", '{"item_id": "n1", "categories": ["c\\u0000"]}', "categories"),
    ("POST", "/items", '[{"item_id": "n1"}, {"item_id": "n2", "attributes": {"x": NaN}}]', "x"),
    ("PUT", "/items/n1", '{"attributes": {"price": -Infinity}}', "price"),
    ("PUT", "/items/%20", '{"title": "x"}', "item_id"),
    ("POST", "/users", '{"user_id": "u\\u0000x"}', "user_id"),
    ("POST", "/users", '{"user_id": "x/y"}', "user_id"),
    ("POST", "/users", '{"user_id": "n1", "attributes": {"age": NaN}}', "age"),
    ("PUT", "/users/n1", '{"attributes": {"age": 1e400}}', "age"),
    ("PUT", "/users/p%00x", '{"attributes": {}}', "user_id"),
    ("POST", "/recommendations", '{"item_ids": ["i1"], "weights": [NaN]}', "weights"),
    ("POST", "/recommendations", '{"item_ids": ["i1"], "weights": [1e400]}', "weights"),
    ("POST", "/recommendations", '{"item_ids": ["i\\ud800"]}', "item_ids"),
    ("POST", "/recommendations", '{"item_ids": ["i1"], "diversity": NaN}', "diversity"),
    ("GET", "/items/p%00x", None, "item_id"),
    ("GET", "/users/p%00x", None, "user_id"),
    ("DELETE", "/items/p%00x", None, "item_id"),
    ("GET", "/items/i1/similar?user_id=u%00", None, "user_id"),
    ("GET", "/items/i1/similar?exclude_item=a%00", None, "exclude_item"),
    ("GET", "/users/u%00/recommendations", None, "user_id"),
    ("GET", "/search?q=a%00b", None, "q"),
]


def test_hostile_input_refused_naming_the_field(client, store):
    before = _contents(store)
    wrong = []
    for method, path, body, field in CASES:
        r = client.request(method, path, content=body.encode("utf-8") if body is not None else None, headers=JSON)
        ok = (
            400 <= r.status_code < 500
            and r.headers["content-type"] == "application/json"
            and field in _named_fields(r.json())
            and len(r.content) < 4000
        )
        if not ok:
            wrong.append(f"{method} {path} {body}: expected 4xx naming {field!r}, got {r.status_code} {r.text[:300]}")
    assert not wrong, "\n".join(wrong)
    assert _contents(store) == before


def test_bad_id_refused_on_every_route_with_the_same_message(client):
    # One rule (recsys.validation.id_problem) behind body fields, path and query parameters.
    messages = set()
    for method, path, body in (
        ("POST", "/events", '{"user_id": "u\\u0000x", "item_id": "i1"}'),
        ("POST", "/users", '{"user_id": "u\\u0000x"}'),
        ("GET", "/users/u%00x", None),
        ("GET", "/items/i1/similar?user_id=u%00x", None),
    ):
        r = client.request(method, path, content=body, headers=JSON)
        assert r.status_code == 422
        messages |= {e["message"] for e in r.json()["detail"]["errors"] if e["type"] == "id_invalid"}
    assert messages == {validation.id_problem("u\x00x")}


def test_every_route_with_a_body_parses_strictly(client):
    """A NaN anywhere in any JSON body is refused by the parser, whatever the route (so a new
    route can't bring back the lenient json.loads)."""
    body_routes = [
        (method.upper(), path)
        for path, ops in client.app.openapi()["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    ]
    assert len(body_routes) >= 6, body_routes
    for method, path in body_routes:
        url = re.sub(r"\{[^}]+\}", "x1", path)
        r = client.request(method, url, content=b'{"anything": NaN}', headers=JSON)
        assert r.status_code == 422, (method, path, r.text)
        assert r.json()["detail"]["errors"] == [
            {
                "field": "anything",
                "location": "body",
                "type": "json_invalid",
                "message": "NaN is not a JSON number (numbers must be finite)",
            }
        ]


def test_valid_input_still_stored(client, store):
    r = client.post(
        "/items",
        headers=JSON,
        content=b'{"item_id": "n1", "title": "caf\\u00e9 \\ud83d\\ude00", '
        b'"attributes": {"price": 12.5, "n": -9223372036854775808, "big": 100000000000000000000000}}',
    )
    assert r.status_code == 201, r.text
    item = store.get_item("n1")
    assert item["title"] == "café 😀" and item["attributes"] == {"price": 12.5, "n": -(2**63), "big": 10**23}
    r = client.post("/events", headers=JSON, content=b'{"user_id": "u 1", "item_id": "n1", "value": 1e-400}')
    assert r.status_code == 200 and r.json()["inserted"] == 1


def test_oversized_batch_answer_is_small(client, store):
    before = _contents(store)
    long_id = "x" * 255
    events = [{"event_id": f"{i}-{long_id}"[:255], "user_id": long_id, "item_id": long_id} for i in range(10_001)]
    body = json.dumps(events).encode()
    assert len(body) > 7 * MiB
    r = client.post("/events", headers=JSON, content=body)
    assert r.status_code == 422
    assert "body" in _named_fields(r.json())
    assert len(r.content) < 2000, len(r.content)
    assert _contents(store) == before


def test_many_invalid_events_answer_is_capped(client):
    events = [{"user_id": "u1", "item_id": "i1", "value": "lots"} for _ in range(5000)]
    r = client.post("/events", headers=JSON, content=json.dumps(events).encode())
    assert r.status_code == 422
    errors = r.json()["detail"]["errors"]
    assert len(errors) == MAX_ERRORS + 1 and errors[-1]["type"] == "too_many_errors"
    assert errors[0]["field"] == "[0].value" and r.json()["detail"]["field"] == "[0].value"
    assert len(r.content) < 8000


def test_long_input_is_previewed_not_echoed(client):
    r = client.post(
        "/events", headers=JSON, content=json.dumps({"user_id": "u1", "item_id": "i1", "value": "v" * 100_000}).encode()
    )
    assert r.status_code == 422 and len(r.content) < 1000
    (error,) = [e for e in r.json()["detail"]["errors"] if e["field"] == "value"]
    assert error["input"].startswith("vvvv") and "100,000 characters" in error["input"]


def _post_chunks(app, path: str, chunks: int, headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST ``chunks`` MiB to the ASGI app one chunk per receive(): (status, JSON body, chunks read).
    (TestClient reads a streamed request body whole before the app sees it.)"""
    read = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal read
        if read < chunks:
            read += 1
            return {"type": "http.request", "body": b" " * MiB, "more_body": read < chunks}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read


def test_body_over_the_limit_refused_before_it_is_read(client, store):
    before = _contents(store)
    # Chunked (no Content-Length): counted as it streams in, cut off at the first MiB past 16.
    status, body, read = _post_chunks(client.app, "/events", 24, JSON)
    assert status == 413
    message = "the request body is larger than 16,777,216 bytes (RECSYS_MAX_BODY_BYTES)"
    assert body == {
        "detail": {
            "field": "body",
            "message": message,
            "errors": [{"field": "body", "location": "body", "message": message, "type": "body_too_large"}],
        }
    }
    assert read == 17
    # With a Content-Length over the limit nothing is read at all.
    status, body, read = _post_chunks(client.app, "/items", 24, {**JSON, "content-length": str(24 * MiB)})
    assert (status, body["detail"]["field"], read) == (413, "body", 0)
    # Under the limit the same streaming path reads everything (and answers as usual).
    status, body, read = _post_chunks(client.app, "/items", 2, JSON)
    assert (status, read) == (422, 2)
    # Through the HTTP client too.
    r = client.post("/users", headers=JSON, content=b" " * (16 * MiB + 1))
    assert r.status_code == 413 and r.json()["detail"]["field"] == "body"
    assert _contents(store) == before


def test_body_limit_is_the_setting(db_url, mlflow_uri, store, tmp_path):
    body = json.dumps({"item_id": "n1", "title": "t" * 3000}).encode()
    with _client(db_url, mlflow_uri, tmp_path, max_body_bytes=len(body)) as client:
        assert client.post("/items", headers=JSON, content=body).status_code == 201
        r = client.post("/items", headers=JSON, content=body + b" ")
        assert r.status_code == 413 and f"{len(body):,} bytes" in r.json()["detail"]["message"]
    assert Settings(data_dir=tmp_path).max_body_bytes == 16 * MiB


def test_read_routes_check_the_key_before_anything_else(db_url, mlflow_uri, store, tmp_path):
    """With RECSYS_READS_REQUIRE_KEY every read route answers 401 / 403 first: the user route
    reads its key itself (api/routes/recommendations.py), the others through the router."""
    with _client(db_url, mlflow_uri, tmp_path, reads_require_key=True) as client:
        for path in ("/users/u1/recommendations?k=0", "/items/i1/similar?k=0", "/users/u%00x/recommendations"):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 403, path
            assert client.get(path, headers={"X-API-Key": KEY}).status_code == 422, path
        # a valid request with the key gets past it (no model in this registry: 503)
        assert client.get("/users/u1/recommendations", headers={"X-API-Key": KEY}).status_code == 503


def test_user_route_names_every_invalid_input_in_one_answer(client):
    r = client.get(
        "/users/u%00x/recommendations",
        params={"k": 0, "diversity": 2, "model_version": "v1"},
        headers={"X-Model-Version": ""},
    )
    assert r.status_code == 422
    locs = {(e["location"], e["field"]) for e in r.json()["detail"]["errors"]}
    assert locs == {
        ("path", "user_id"),
        ("query", "k"),
        ("query", "diversity"),
        ("query", "model_version"),
        ("header", "x-model-version"),
    }


def test_user_route_documents_the_inputs_it_reads(client):
    """The route reads its inputs itself; its OpenAPI operation is FastAPI's rendering of the
    declared signature: the path, every query field, the pin and the API key."""
    op = client.app.openapi()["paths"]["/users/{user_id}/recommendations"]["get"]
    params = {(p["in"], p["name"]) for p in op["parameters"]}
    assert {("path", "user_id"), ("query", "k"), ("query", "exclude_item"), ("query", "diversity")} <= params
    assert {("query", "model_version"), ("header", "x-model-version")} <= params
    assert op["security"] == [{"APIKeyHeader": []}]
    similar = client.app.openapi()["paths"]["/items/{item_id}/similar"]["get"]
    shared = {(p["in"], p["name"]) for p in similar["parameters"]} - {("path", "item_id"), ("query", "mode")}
    assert shared - {("query", "user_id")} <= params  # the filters and the pin, documented alike


def test_made_up_methods_and_paths_do_not_grow_metrics(client):
    for i in range(5):
        assert client.request(f"FOO{i}", "/health").status_code == 405
        assert client.get(f"/no-such-path-{i}").status_code == 404
    text = client.get("/metrics").text
    assert "FOO" not in text and "no-such-path" not in text
    methods = set(re.findall(r'method="([^"]*)"', text))
    assert "other" in methods and methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert 'route="unmatched"' in text


# ---- property-based: hostile leaves anywhere in write bodies --------------------------------
def _valid_event(i: int) -> dict:
    return {
        "event_id": f"p{i}",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "value": 1.0,
        "timestamp": "2026-01-01T00:00:00Z",
    }


WRITES = st.sampled_from(
    [
        ("POST", "/events", _valid_event(0)),
        ("POST", "/events", [_valid_event(1), _valid_event(2)]),
        (
            "POST",
            "/items",
            {
                "item_id": "n1",
                "title": "t",
                "description": "d",
                "categories": ["c"],
                "attributes": {"price": 1.5, "brand": "b"},
            },
        ),
        ("PUT", "/items/n2", {"title": "t", "categories": ["c"], "attributes": {"price": 2}}),
        ("POST", "/users", {"user_id": "n3", "attributes": {"age": 30, "tier": "gold"}}),
        ("PUT", "/users/n4", {"attributes": {"age": 30}}),
        (
            "POST",
            "/recommendations",
            {
                "item_ids": ["i1", "i2"],
                "weights": [1.0, 2.0],
                "k": 3,
                "filters": {"include_attributes": {"brand": ["b"]}},
            },
        ),
    ]
)
HOSTILE_WRITES = WRITES.flatmap(lambda w: st.tuples(st.just(w[0]), st.just(w[1]), mutated(w[2])))


def test_property_hostile_write_bodies_never_5xx_never_stored_broken(client, store):
    statuses: set[int] = set()

    @settings(
        max_examples=150,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(HOSTILE_WRITES)
    def check(write):
        method, path, body = write
        r = client.request(method, path, content=raw_json(body), headers=JSON)
        statuses.add(r.status_code)
        # No model is loaded here: a valid /recommendations body gets the documented 503.
        assert r.status_code < 500 or (path == "/recommendations" and r.status_code == 503), (r.status_code, r.text)
        answer = r.json()  # always JSON, always decodable
        if r.status_code >= 400:
            assert answer["detail"]["errors"] and len(r.content) < 8000

    check()
    assert 422 in statuses and statuses & {200, 201}, statuses  # both refused and accepted bodies were tried
    assert_stored_values_valid(store)


# ---- the feature store refuses the same values from any caller ------------------------------
STORE_CASES = [
    ("upsert_items", {"item_id": "n1", "attributes": {"price": math.nan}}),
    ("upsert_items", {"item_id": "n1", "attributes": {"price": math.inf}}),
    ("upsert_items", {"item_id": "n1", "attributes": {"k": "\ud800"}}),
    ("upsert_items", {"item_id": "a/b"}),
    ("upsert_items", {"item_id": "n1", "categories": ["c\x00"]}),
    ("upsert_items", {"item_id": "n1", "title": "t\x00"}),
    ("upsert_users", {"user_id": "u\x00x"}),
    ("upsert_users", {"user_id": "n1", "attributes": {"age": -math.inf}}),
    ("add_events", {"user_id": "u\x00x", "item_id": "i1"}),
    ("add_events", {"user_id": "u1", "item_id": "i1", "value": math.nan}),
    ("add_events", {"user_id": "u1", "item_id": "i1", "value": math.inf}),
    ("add_events", {"user_id": "u1", "item_id": "i1", "timestamp": math.nan}),
    ("add_events", {"event_id": "e\ud800", "user_id": "u1", "item_id": "i1"}),
]


def test_store_refuses_values_the_api_refuses(store):
    before = _contents(store)
    for method, record in STORE_CASES:
        with pytest.raises(DatasetError, match="record 1"):
            getattr(store, method)([_valid_record(method), record])  # the valid one isn't written either
    assert _contents(store) == before


def _valid_record(method: str) -> dict:
    return {
        "upsert_items": {"item_id": "ok-item"},
        "upsert_users": {"user_id": "ok-user"},
        "add_events": {"event_id": "ok-event", "user_id": "u1", "item_id": "i1"},
    }[method]


# ---- recsys.validation.loads_json --------------------------------------------------------------
@pytest.mark.parametrize(
    "text, path, needle",
    [
        (b'{"a": NaN}', ("a",), "NaN"),
        (b'{"a": [1, {"b": -Infinity}]}', ("a", 1, "b"), "-Infinity"),
        (b"[1e400]", (0,), "1e400"),
        (b'{"s": "x\\ud800"}', ("s",), "U+D800"),
        ('{"s": "\udc00"}'.encode("utf-8", "surrogatepass"), ("s",), "U+DC00"),
        (b'{"k\\udbff": 1}', (), "key"),
        (b"[" + b"9" * 5000 + b"]", (0,), "5,000 digits"),
    ],
)
def test_loads_json_refuses_with_path(text, path, needle):
    with pytest.raises(validation.InvalidJSON) as info:
        validation.loads_json(text)
    assert info.value.path == path and needle in info.value.msg
    assert isinstance(info.value, json.JSONDecodeError)


def test_loads_json_accepts_what_json_accepts():
    text = '{"a": [1, 2.5, 1e300, 1e-400, -0.0, true, null, "NaN", "\\ud83d\\ude00", "\\\\ud800"]}'
    assert validation.loads_json(text.encode()) == json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        validation.loads_json(b'{"a": ')
