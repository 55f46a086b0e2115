"""/search: words (BM25 over the catalog text), meaning (the content space) or both.

The lexical index on its own (stemming, stop words, typo correction, rebuild after a write); then
through the API in process (TestClient) on a real store — SQLite and PostgreSQL — and a real
MLflow registry, with a second app on the same store playing another worker: an edited item is
found by its new words and not its old ones on the next request in both, its content vector
follows the new text, a blank query is a 422 naming ``q``, no match is an empty list, pages
never repeat, and filters and availability hold for every kind of match.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from harness import prepare

from api.main import create_app
from recsys.lexical import LexicalIndex
from recsys.settings import Settings

pytestmark = pytest.mark.slow  # trains models or starts processes: not in make test-fast

KEY = "search-key"
AUTH = {"X-API-Key": KEY}
MATCHES = ("lexical", "semantic", "hybrid")
REASONS = {"matches the words", "matches the meaning", "matches the words and the meaning"}


# ---- the lexical index ---------------------------------------------------------------------
def _index(texts: list[str]) -> LexicalIndex:
    index = LexicalIndex()
    index.set_texts(texts)
    return index


def _top(index: LexicalIndex, query: str) -> list[int]:
    scores = index.scores(index.parse(query))
    return [int(j) for j in np.argsort(-scores, kind="stable") if scores[j] > 0]


def test_stems_stop_words_and_typos():
    index = _index(["Star Wars", "Star Trek: First Contact", "The War of the Roses", "Unhook the Stars", "Casablanca"])
    assert _top(index, "star wars")[0] == 0
    assert set(_top(index, "wars")) == {0, 2}  # "wars" and "War" share a stem
    assert _top(index, "the") == [] and _top(index, "xqzvv wplkj") == []
    parsed = index.parse("Casablnaca")  # one swapped pair of letters
    assert parsed.corrections == (("casablnaca", "casablanca"),) and _top(index, "Casablnaca") == [4]
    assert _top(index, "Trke") == [1]  # 4 letters: one edit allowed
    assert index.parse("teh").corrections == ()  # 3 letters: never corrected


def test_writes_are_found_on_the_next_query():
    index = _index(["red apple", "green pear"])
    index.update([1], ["yellow banana"])
    assert _top(index, "pear") == [] and _top(index, "banana") == [1]
    index.update([2], ["green pear"])  # the next position: appended
    assert _top(index, "pear") == [2] and len(index) == 3
    assert _top(_index(["", ""]), "anything") == []  # no words at all: nothing matches


# ---- through the API -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request, tmp_path_factory):
    url = request.getfixturevalue("postgres_url_module") if request.param == "postgres" else None
    return prepare(
        tmp_path_factory.mktemp(f"search-{request.param}"),
        users=200,
        items=120,
        events=5_000,
        clusters=4,
        database_url=url,
        content="tfidf",
    )


def _app(env):
    return create_app(
        Settings(
            data_dir=Path(env["RECSYS_DATA_DIR"]),
            database_url=env.get("RECSYS_DATABASE_URL", ""),
            api_keys=KEY,
            reload_poll_seconds=0,
            history_feed_seconds=0.1,
        )
    )


@pytest.fixture(scope="module")
def workers(env):
    """Two apps on one store and registry: two workers (or replicas) of one service."""
    with TestClient(_app(env)) as a, TestClient(_app(env)) as b:
        yield a, b


def search(client: TestClient, q: str, **params) -> dict:
    r = client.get("/search", params={"q": q, **params})
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def _item(client: TestClient, item_id: str) -> dict:
    r = client.get(f"/items/{item_id}")
    assert r.status_code == 200, r.text
    return r.json()


def test_edited_text_is_found_by_its_new_words_not_its_old_ones_in_every_worker(workers):
    a, b = workers
    edited = _item(a, "i5")
    old_words = edited["title"]
    # an item of another topic: no word of its text is in i5's title
    model = next(
        item
        for item in (_item(a, f"i{j}") for j in range(6, 120))
        if not set(old_words.lower().split()) & set(f"{item['title']} {item['description']}".lower().split())
    )
    assert "i5" in ids(search(b, old_words, match="lexical"))
    # i5 takes i9's text plus a word no item had
    new = {**edited, "title": f"{model['title']} quokka", "description": model["description"]}
    new.pop("item_id", None)
    r = a.put("/items/i5", json=new, headers=AUTH)
    assert r.status_code == 200, r.text
    for worker in (a, b):  # the next request, in either worker
        found = search(worker, "quokka")
        assert ids(found) == ["i5"] and found["items"][0]["reason"].startswith("matches the words")
        for match in MATCHES:
            assert "i5" not in ids(search(worker, old_words, match=match, k=120)), match
        # content similarity follows the new text: i5 is now i9's nearest neighbour
        similar = worker.get(f"/items/{model['item_id']}/similar", params={"mode": "content", "k": 1}).json()
        assert ids(similar) == ["i5"] and similar["items"][0]["score"] > 0.9


def test_blank_query_is_refused_naming_q(workers):
    a, _ = workers
    for q in ("", "   ", "\t"):
        r = a.get("/search", params={"q": q})
        assert r.status_code == 422, (q, r.text)
        assert r.json()["detail"]["field"] == "q", r.text


def test_no_match_is_an_empty_list(workers):
    a, _ = workers
    for q in ("xqzvv wplkj", "the", "of the and"):
        for match in MATCHES:
            assert search(a, q, match=match)["items"] == [], (q, match)


def test_every_result_says_how_it_matched(workers):
    a, _ = workers
    title = _item(a, "i20")["title"]
    body = search(a, title, k=20)
    assert body["items"][0]["item_id"] == "i20"
    assert body["items"][0]["reason"] == "matches the words and the meaning"
    assert {i["reason"] for i in body["items"]} <= REASONS
    assert all(i["score"] > 0 for i in body["items"])
    assert {i["reason"] for i in search(a, title, match="lexical")["items"]} == {"matches the words"}
    assert {i["reason"] for i in search(a, title, match="semantic")["items"]} == {"matches the meaning"}


@pytest.mark.parametrize("match", MATCHES)
def test_pages_never_repeat_and_join_up_to_the_whole_list(workers, match):
    a, _ = workers
    q = "astronaut telescope recipe sauce"
    whole = ids(search(a, q, match=match, k=30))
    assert len(whole) >= 12 and len(set(whole)) == len(whole)
    pages = [ids(search(a, q, match=match, k=4, offset=o)) for o in (0, 4, 8)]
    assert sum(pages, []) == whole[:12]


@pytest.mark.parametrize("match", MATCHES)
def test_filters_and_availability_hold(workers, match):
    a, b = workers
    q = "astronaut telescope recipe sauce"
    body = search(a, q, match=match, k=50, include_category="space")
    assert body["items"]
    cats = {i: _item(a, i)["categories"] for i in ids(body)}
    assert all("space" in c for c in cats.values())
    assert not set(ids(search(a, q, match=match, k=50, exclude_category="space"))) & set(cats)
    top = ids(search(a, q, match=match, k=5))
    assert not set(ids(search(a, q, match=match, k=50, exclude_item=top[:2]))) & set(top[:2])
    gone = top[0]
    assert a.delete(f"/items/{gone}", headers=AUTH).status_code == 200
    for worker in (a, b):
        assert gone not in ids(search(worker, q, match=match, k=120))


def test_words_need_no_text_encoder(tmp_path):
    env = prepare(tmp_path, users=100, items=60, events=2_000, clusters=3)  # no content encoder
    with TestClient(_app(env)) as client:
        title = _item(client, "i7")["title"]
        body = search(client, title, match="lexical")
        assert body["items"][0]["item_id"] == "i7" and body["mode"] == "lexical"
        for match in ("semantic", "hybrid"):
            r = client.get("/search", params={"q": title, "match": match})
            assert r.status_code == 503 and r.json()["detail"]["field"] == "match", r.text
