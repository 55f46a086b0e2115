"""A served model keeps its contracts (real trained model, HTTP): one pager for every re-ranker
(pages k=10 at offsets 0/10/20 concatenate to the k=30 list and never repeat an item, whatever
the mode, rules and re-rankers), one cache entry per version however it is spelled, 404 for an
alias that does not exist."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from harness import prepare, settings_for

from api.main import create_app

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = prepare(tmp_path_factory.mktemp("paging"), users=200, items=150, events=6000, clusters=5, content="tfidf")
    with TestClient(
        create_app(settings_for(env).model_copy(update={"reload_poll_seconds": 0, "api_keys": KEY}))
    ) as client:
        yield client


KEY = "paging-key"

OPTIONS = {
    "default": {},
    "diversity": {"diversity": 0.3},
    "calibration": {"calibration": 1},
    "both": {"diversity": 0.5, "calibration": 0.7},
    "content+diversity": {"mode": "content", "diversity": 0.3},
    "hybrid+calibration": {"mode": "hybrid", "calibration": 1, "fusion": "rrf"},
    "rules+diversity": {"diversity": 0.2, "exclude_seen": False, "exclude_item": ["i1", "i2"]},
}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_pages_are_slices_of_one_list(client, name):
    params = OPTIONS[name]
    for user in ("u3", "u17", "u150"):
        whole = client.get(f"/users/{user}/recommendations", params={**params, "k": 30})
        assert whole.status_code == 200, whole.text
        full = [i["item_id"] for i in whole.json()["items"]]
        pages = []
        for offset in (0, 10, 20):
            r = client.get(f"/users/{user}/recommendations", params={**params, "k": 10, "offset": offset})
            pages += [i["item_id"] for i in r.json()["items"]]
        assert len(set(pages)) == len(pages), f"{name}: a page repeats an item"
        assert pages == full, name
        odd = client.get(f"/users/{user}/recommendations", params={**params, "k": 7, "offset": 13})
        assert [i["item_id"] for i in odd.json()["items"]] == full[13:20]


def test_model_version_spellings_share_one_cache_entry(client):
    answers = [client.get("/users/u3/recommendations", params={"model_version": v}) for v in ("1", "01", "001")]
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    assert len({tuple(i["item_id"] for i in r.json()["items"]) for r in answers}) == 1
    assert client.app.state.holder.cached_versions() in ([], ["1"])


def test_reload_of_an_unknown_alias_is_404(client):
    r = client.post("/admin/reload", params={"alias": "nosuch"}, headers={"X-API-Key": KEY})
    assert r.status_code == 404 and r.json()["detail"]["field"] == "alias", r.text
    assert "'nosuch'" in r.json()["detail"]["message"]
    assert client.post("/admin/reload", headers={"X-API-Key": KEY}).status_code == 200
