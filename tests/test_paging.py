"""One pager for every re-ranker: pages k=10 at offsets 0/10/20 concatenate to the k=30 list and
never repeat an item, whatever the mode, rules and re-rankers (real trained model, HTTP)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from api.testing import prepare, settings_for


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    env = prepare(tmp_path_factory.mktemp("paging"), users=200, items=150, events=6000, clusters=5, content="tfidf")
    with TestClient(create_app(settings_for(env).model_copy(update={"reload_poll_seconds": 0}))) as client:
        yield client


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
