"""schemathesis against the service's own OpenAPI schema on a live uvicorn, on SQLite and on
PostgreSQL: no 5xx, responses conform to the schema (status codes, content types, bodies), and
nothing broken gets stored. The generated cases are laced with hostile values — NaN, Infinity,
1e400, lone surrogates, NUL, '/', controls — by the hooks in tests/schemathesis_hooks.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from harness import live_server, prepare, settings_for
from hostile_input import assert_stored_values_valid

from feature_store import FeatureStore
from recsys.datasets.synthetic import generate_synthetic

pytestmark = pytest.mark.slow

KEY = "schema-key"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
DATA = {"n_users": 200, "n_items": 120, "n_events": 6000, "n_clusters": 6, "seed": 7}
SERVER_ENV = {"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}
TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One small hybrid (ALS + tf-idf) model in a registry, trained once for the module."""
    return prepare(
        tmp_path_factory.mktemp("schema"),
        users=DATA["n_users"],
        items=DATA["n_items"],
        events=DATA["n_events"],
        clusters=DATA["n_clusters"],
        seed=DATA["seed"],
        content="tfidf",
    )


@pytest.fixture(scope="module")
def server(trained):
    with live_server(trained, extra_env=SERVER_ENV) as base:
        yield base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, trained):
    """(base URL, store) of a live server with the trained model: on SQLite the module's server,
    on PostgreSQL a fresh database holding the same data (one server start per backend)."""
    if request.param == "sqlite":
        store = FeatureStore(settings_for(trained).database_url)
        yield request.getfixturevalue("server"), store
    else:
        url = request.getfixturevalue("postgres_url")
        store = FeatureStore(url)
        store.ingest(generate_synthetic(**DATA))
        with live_server({**trained, "RECSYS_DATABASE_URL": url}, extra_env=SERVER_ENV) as base:
            yield base, store
    store.dispose()


def test_hybrid_model_search_and_cold_start(server):
    import httpx

    r = httpx.get(f"{server}/search", params={"q": "telescope", "k": 5})
    assert r.status_code == 200 and r.json()["mode"] == "hybrid" and len(r.json()["items"]) == 5
    for mode in ("collaborative", "content", "hybrid"):
        body = httpx.get(f"{server}/items/i3/similar", params={"mode": mode, "k": 5}).json()
        assert body["mode"] == mode and len(body["items"]) == 5
    body = httpx.get(
        f"{server}/users/u3/recommendations",
        params={"mode": "hybrid", "cf_weight": 1, "content_weight": 1, "fusion": "rrf"},
    ).json()
    assert body["mode"] == "hybrid" and len(body["items"]) == 10
    # A new item is servable at once (content vector + CF vector predicted from content).
    new = {
        "item_id": "brand-new-1",
        "title": "zanzibar quokka telescope",
        "description": "zanzibar quokka telescope",
        "categories": ["novelty"],
    }
    assert httpx.post(f"{server}/items", headers={"X-API-Key": KEY}, json=new).status_code == 201
    found = [
        i["item_id"]
        for i in httpx.get(f"{server}/search", params={"q": "zanzibar quokka telescope", "k": 3}).json()["items"]
    ]
    assert "brand-new-1" in found
    assert httpx.get(f"{server}/items/brand-new-1/similar", params={"mode": "content"}).status_code == 200
    httpx.delete(f"{server}/items/brand-new-1", headers={"X-API-Key": KEY}).raise_for_status()
    found = [
        i["item_id"]
        for i in httpx.get(f"{server}/search", params={"q": "zanzibar quokka telescope", "k": 50}).json()["items"]
    ]
    assert "brand-new-1" not in found


def test_openapi_fuzz_with_hostile_values(served, tmp_path):
    base, store = served
    examples = os.environ.get("RECSYS_SCHEMATHESIS_EXAMPLES", "12")
    cmd = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{base}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        examples,
        "--seed",
        "1",
        "-H",
        f"X-API-Key: {KEY}",
        "--generation-database",
        "none",
        "--exclude-path",
        "/admin/reload",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
        "--no-color",
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert_stored_values_valid(store)
    # whatever was stored (markup and math text in labels, times at both ends of the range),
    # every page still renders; events at the range ends included on purpose
    store.add_events(
        [
            {"user_id": "fuzz-edge", "item_id": store.items_frame()["item_id"].iloc[0], "timestamp": t, "variant": v}
            for t, v in (("1970-01-01T00:00:00Z", "$\\frac{$"), ("2199-12-31T23:59:59Z", "[/x]"))
        ]
    )
    for page in ("/ui", "/ui/ab", "/ui/users/fuzz-edge"):
        r = httpx.get(f"{base}{page}", timeout=60)
        assert r.status_code == 200, (page, r.status_code)


def test_live_server_refuses_oversized_body_before_reading_it(server):
    """Content-Length over RECSYS_MAX_BODY_BYTES: uvicorn answers 413 after the first 64 KiB,
    while the client has not sent (and the server not read) the other 20 MB."""
    url = urlsplit(server)
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(
            b"POST /events HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"X-API-Key: " + KEY.encode() + b"\r\nContent-Length: 21000000\r\n\r\n" + b"[" + b" " * 65536
        )
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:500]
    detail = json.loads(body)["detail"]  # the API's one error body
    assert detail["field"] == "body" and detail["errors"][0]["type"] == "body_too_large", detail
