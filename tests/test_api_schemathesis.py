"""schemathesis against the service's own OpenAPI schema on a live uvicorn: no 5xx, responses
conform to the schema (status codes, content types, bodies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from api.testing import live_server, prepare

pytestmark = pytest.mark.slow

KEY = "schema-key"
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = prepare(tmp_path_factory.mktemp("schema"), users=200, items=120, events=6000, content="tfidf")
    with live_server(env, extra_env={"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}) as base:
        yield base


def test_hybrid_model_search_and_cold_start(server):
    import httpx

    r = httpx.get(f"{server}/search", params={"q": "item", "k": 5})
    assert r.status_code == 200 and r.json()["mode"] == "content" and len(r.json()["items"]) == 5
    for mode in ("collaborative", "content", "hybrid"):
        body = httpx.get(f"{server}/items/i3/similar", params={"mode": mode, "k": 5}).json()
        assert body["mode"] == mode and len(body["items"]) == 5
    body = httpx.get(f"{server}/users/u3/recommendations", params={"mode": "hybrid", "cf_weight": 1, "content_weight": 1, "fusion": "rrf"}).json()
    assert body["mode"] == "hybrid" and len(body["items"]) == 10
    # A new item is servable at once (content vector + CF vector predicted from content).
    new = {"item_id": "brand-new-1", "title": "zanzibar quokka telescope", "description": "zanzibar quokka telescope",
           "categories": ["novelty"]}
    assert httpx.post(f"{server}/items", headers={"X-API-Key": KEY}, json=new).status_code == 201
    found = [i["item_id"] for i in httpx.get(f"{server}/search", params={"q": "zanzibar quokka telescope", "k": 3}).json()["items"]]
    assert "brand-new-1" in found
    assert httpx.get(f"{server}/items/brand-new-1/similar", params={"mode": "content"}).status_code == 200
    httpx.delete(f"{server}/items/brand-new-1", headers={"X-API-Key": KEY}).raise_for_status()
    found = [i["item_id"] for i in httpx.get(f"{server}/search", params={"q": "zanzibar quokka telescope", "k": 50}).json()["items"]]
    assert "brand-new-1" not in found


def test_openapi_conformance(server, tmp_path):
    examples = os.environ.get("RECSYS_SCHEMATHESIS_EXAMPLES", "25")
    cmd = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{server}/openapi.json",
           "--checks", CHECKS, "--max-examples", examples, "--seed", "1", "-H", f"X-API-Key: {KEY}",
           "--generation-database", "none", "--exclude-path", "/admin/reload",
           "--report", "junit", "--report-dir", str(tmp_path), "--no-color"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
