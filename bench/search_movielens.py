"""/search on the MovieLens 100K catalog, over HTTP: words (BM25), meaning (TF-IDF → LSA) and both.

Setup: the ML-100K catalog (1,682 films: title, genres, year) and ratings ingested into a fresh
SQLite store, one model trained with the TF-IDF content encoder (``recsys train``'s path,
``tests/harness.py:training_config``), served by ``recsys serve`` (one uvicorn worker). Queries go
through one keep-alive HTTP connection, one at a time; latency is the client's wall time per
request.

Queries:
- known item, exact: every title without its year ("Toy Story"); the relevant items are those
  with that same title (a few films are listed twice, or share a title) → MRR@10, hit@1, hit@5;
- known item, one typo: the same with one random edit (substitute, delete, insert or swap two
  neighbouring letters) in one word of 4+ letters (the longest word when none is), seeded;
- genre: each genre name ("Film-Noir") → precision@10 of items in that genre.

The hybrid's lexical weight is chosen on a validation set — a random 30% of the titles (exact and
typo) and the genres — in process, on the served Recommender, by the mean of exact MRR, typo MRR
and genre P@10; the served default (``SEARCH_LEXICAL_WEIGHT``) must be within 0.01 of the best.

Exit 0 only when, for the hybrid: known-item MRR@10 ≥ 0.95 (exact) and ≥ 0.80 (one typo), genre
precision@10 ≥ semantic-only's, p99 latency ≤ 20 ms — and the default weight is the validated one.
Data: ../shared/datasets/ml-100k (skipped when absent).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from recsys.datasets import load_movielens_100k  # noqa: E402
from recsys.recommender import SEARCH_LEXICAL_WEIGHT, Recommender  # noqa: E402
from tests.harness import live_server, settings_for, training_config  # noqa: E402

DATA = ROOT.parent / "shared" / "datasets" / "ml-100k"
K = 10
SEED = 42
VALIDATION_SHARE = 0.3
WEIGHTS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
MATCHES = ("lexical", "semantic", "hybrid")
TARGETS = {"exact_mrr": 0.95, "typo_mrr": 0.80, "p99_ms": 20.0}
_YEAR = re.compile(r"\s*\(\d{4}\)\s*$")


@dataclass(frozen=True)
class Query:
    text: str
    relevant: frozenset[str]
    kind: str  # exact | typo | genre
    #: the title (or genre) the query was made from
    source: str = ""


def typo(text: str, rng: np.random.Generator) -> str:
    """One random edit in one word of 4+ letters (the longest word when none is)."""
    words = text.split(" ")
    letters = [i for i, w in enumerate(words) if sum(c.isalpha() for c in w) >= 4]
    i = int(rng.choice(letters)) if letters else max(range(len(words)), key=lambda i: len(words[i]))
    word = words[i]
    at = int(rng.integers(len(word)))
    op = rng.choice(["substitute", "delete", "insert", "swap"] if len(word) > 1 else ["substitute", "insert"])
    letter = chr(ord("a") + int(rng.integers(26)))
    if op == "substitute":
        word = (
            word[:at] + (letter if letter != word[at].lower() else chr((ord(letter) - 96) % 26 + 97)) + word[at + 1 :]
        )
    elif op == "delete":
        word = word[:at] + word[at + 1 :]
    elif op == "insert":
        word = word[:at] + letter + word[at:]
    else:
        at = min(at, len(word) - 2)
        word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    words[i] = word
    return " ".join(words)


def queries(items) -> list[Query]:
    rng = np.random.default_rng(SEED)
    by_title: dict[str, set[str]] = {}
    for item_id, title in zip(items["item_id"].astype(str), items["title"].astype(str)):
        by_title.setdefault(_YEAR.sub("", title).strip().lower(), set()).add(item_id)
    out = []
    for title in items["title"].astype(str):
        text = _YEAR.sub("", title).strip()
        if not text or text.lower() == "unknown":
            continue
        relevant = frozenset(by_title[text.lower()])
        out.append(Query(text, relevant, "exact", text))
        out.append(Query(typo(text, rng), relevant, "typo", text))
    genres: dict[str, set[str]] = {}
    for item_id, cats in zip(items["item_id"].astype(str), items["categories"]):
        for c in cats:
            genres.setdefault(str(c), set()).add(item_id)
    out += [Query(g, frozenset(ids), "genre", g) for g, ids in sorted(genres.items()) if g.lower() != "unknown"]
    return out


def metrics(rows: list[tuple[Query, list[str]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for kind in ("exact", "typo"):
        ranks = []
        for q, got in rows:
            if q.kind == kind:
                ranks.append(next((r for r, i in enumerate(got[:K], 1) if i in q.relevant), None))
        out[f"{kind}_mrr"] = float(np.mean([1 / r if r else 0.0 for r in ranks]))
        out[f"{kind}_hit1"] = float(np.mean([r == 1 for r in ranks]))
        out[f"{kind}_hit5"] = float(np.mean([r is not None and r <= 5 for r in ranks]))
    genre = [sum(i in q.relevant for i in got[:K]) / K for q, got in rows if q.kind == "genre"]
    out["genre_p10"] = float(np.mean(genre))
    return out


def choose_weight(recommender: Recommender, validation: list[Query], console: Console) -> dict[float, float]:
    """Validation objective (mean of exact MRR, typo MRR, genre P@10) per lexical weight."""
    table = Table(title=f"hybrid lexical weight on the validation set ({len(validation)} queries)")
    for col in ("weight", "exact MRR@10", "typo MRR@10", "genre P@10", "objective"):
        table.add_column(col, justify="right")
    scores = {}
    for w in WEIGHTS:
        rows = [(q, [i.item_id for i in recommender.search(q.text, K, lexical_weight=w).items]) for q in validation]
        m = metrics(rows)
        scores[w] = (m["exact_mrr"] + m["typo_mrr"] + m["genre_p10"]) / 3
        table.add_row(
            f"{w:.2f}", f"{m['exact_mrr']:.3f}", f"{m['typo_mrr']:.3f}", f"{m['genre_p10']:.3f}", f"{scores[w]:.4f}"
        )
    console.print(table)
    return scores


def compare_backends(recommender: Recommender, qs: list[Query], console: Console) -> None:
    """The lexical half, in process, on the same queries and texts: bm25s (what /search uses)
    against SQLite FTS5 (``porter unicode61`` tokenizer, terms OR-ed, ranked by ``bm25()``)."""
    import sqlite3

    catalog = recommender.catalog
    db = sqlite3.connect(":memory:")
    db.execute("CREATE VIRTUAL TABLE docs USING fts5(body, tokenize='porter unicode61')")
    db.executemany(
        "INSERT INTO docs(rowid, body) VALUES (?, ?)", [(j, catalog.search_text(j)) for j in range(len(catalog))]
    )

    def fts5(text: str) -> list[str]:
        terms = " OR ".join(f'"{w}"' for w in re.findall(r"\w+", text))
        if not terms:
            return []
        rows = db.execute("SELECT rowid FROM docs WHERE docs MATCH ? ORDER BY bm25(docs) LIMIT ?", (terms, K))
        return [catalog.item_ids[r] for (r,) in rows]

    def bm25s(text: str) -> list[str]:
        return [i.item_id for i in recommender.search(text, K, match="lexical").items]

    table = Table(title="lexical backends in process (same catalog text and queries)")
    for col in ("backend", "exact MRR@10", "typo MRR@10", "genre P@10", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right")
    for name, run in (("bm25s + PyStemmer + typo correction", bm25s), ("SQLite FTS5 (porter)", fts5)):
        rows, latency = [], []
        for q in qs:
            start = time.perf_counter()
            got = run(q.text)
            latency.append(time.perf_counter() - start)
            rows.append((q, got))
        m, lat = metrics(rows), np.asarray(latency) * 1000
        table.add_row(
            name,
            f"{m['exact_mrr']:.3f}",
            f"{m['typo_mrr']:.3f}",
            f"{m['genre_p10']:.3f}",
            f"{np.percentile(lat, 50):.3f}",
            f"{np.percentile(lat, 99):.3f}",
        )
    console.print(table)


def over_http(base: str, qs: list[Query], match: str) -> tuple[dict[str, float], np.ndarray]:
    rows, latency = [], []
    with httpx.Client(base_url=base, timeout=30) as client:
        for q in qs[:20]:  # warm-up
            client.get("/search", params={"q": q.text, "k": K, "match": match})
        for q in qs:
            start = time.perf_counter()
            response = client.get("/search", params={"q": q.text, "k": K, "match": match})
            latency.append(time.perf_counter() - start)
            response.raise_for_status()
            rows.append((q, [i["item_id"] for i in response.json()["items"]]))
    return metrics(rows), np.asarray(latency) * 1000


def main() -> int:
    console = Console(width=150)
    if not (DATA / "u.data").exists():
        print(f"MovieLens 100K not found at {DATA}: skipped")
        return 0
    dataset = load_movielens_100k(DATA)
    qs = queries(dataset.items)
    rng = np.random.default_rng(SEED + 1)
    titles = sorted({q.text for q in qs if q.kind == "exact"})
    chosen = set(rng.choice(titles, size=int(VALIDATION_SHARE * len(titles)), replace=False).tolist())
    validation = [q for q in qs if q.kind == "genre" or q.source in chosen]

    from api.serving import ModelHolder
    from feature_store import FeatureStore
    from pipelines.train import train

    with tempfile.TemporaryDirectory(prefix="search-bench-") as tmp:
        env = {**os.environ, "RECSYS_DATA_DIR": tmp, "RECSYS_API_KEYS": "bench-key"}
        settings = settings_for(env)
        start = time.perf_counter()
        FeatureStore(settings.database_url).ingest(dataset)
        train(settings, training_config(factors=32, iterations=10, content="tfidf"))
        console.print(f"ingested and trained in {time.perf_counter() - start:.1f}s")

        holder = ModelHolder(settings, FeatureStore(settings.database_url))
        recommender = holder.load_alias().recommender
        start = time.perf_counter()
        recommender.lexical.set_texts([recommender.catalog.search_text(j) for j in range(len(recommender.catalog))])
        recommender.lexical.parse("warm")
        rebuild_ms = (time.perf_counter() - start) * 1000
        val = choose_weight(recommender, validation, console)
        best = max(val, key=val.get)
        default_ok = val.get(SEARCH_LEXICAL_WEIGHT, -1.0) >= val[best] - 0.01
        console.print(
            f"validation best weight {best:.2f} (objective {val[best]:.4f}); served default "
            f"{SEARCH_LEXICAL_WEIGHT} → {val.get(SEARCH_LEXICAL_WEIGHT, float('nan')):.4f}: "
            f"{'ok' if default_ok else 'NOT the validated weight'}; lexical index rebuild {rebuild_ms:.0f} ms"
        )
        compare_backends(recommender, qs, console)
        holder.stop()

        results = {}
        with live_server(env, workers=1) as base:
            for match in MATCHES:
                results[match] = over_http(base, qs, match)

    n = {kind: sum(q.kind == kind for q in qs) for kind in ("exact", "typo", "genre")}
    table = Table(title=f"/search over HTTP, MovieLens 100K ({n['exact']} titles, {n['genre']} genres, k={K})")
    for col in (
        "match",
        "exact MRR@10",
        "exact hit@1",
        "exact hit@5",
        "typo MRR@10",
        "typo hit@1",
        "typo hit@5",
        "genre P@10",
        "p50 ms",
        "p99 ms",
    ):
        table.add_column(col, justify="right")
    for match, (m, lat) in results.items():
        table.add_row(
            match,
            *(f"{m[c]:.3f}" for c in ("exact_mrr", "exact_hit1", "exact_hit5", "typo_mrr", "typo_hit1", "typo_hit5")),
            f"{m['genre_p10']:.3f}",
            f"{np.percentile(lat, 50):.2f}",
            f"{np.percentile(lat, 99):.2f}",
        )
    console.print(table)
    hybrid, hybrid_lat = results["hybrid"]
    checks = {
        f"hybrid exact MRR@10 ≥ {TARGETS['exact_mrr']}": hybrid["exact_mrr"] >= TARGETS["exact_mrr"],
        f"hybrid typo MRR@10 ≥ {TARGETS['typo_mrr']}": hybrid["typo_mrr"] >= TARGETS["typo_mrr"],
        "hybrid genre P@10 ≥ semantic-only": hybrid["genre_p10"] >= results["semantic"][0]["genre_p10"],
        f"hybrid p99 ≤ {TARGETS['p99_ms']} ms": float(np.percentile(hybrid_lat, 99)) <= TARGETS["p99_ms"],
        "served lexical weight is the validated one": default_ok,
    }
    for name, ok in checks.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {name}")
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
