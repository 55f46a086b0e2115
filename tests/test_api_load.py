"""Under load, over real HTTP: events durability (small run of bench/durability_bench.py),
model swaps while a client hammers recommendations, catalog changes across workers."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from harness import ROOT, live_server, prepare, settings_for, training_config

pytestmark = pytest.mark.slow

KEY = "load-key"


def test_durability_small():
    env = {
        **os.environ,
        "RECSYS_DURABILITY_EVENTS": os.environ.get("RECSYS_TEST_DURABILITY_EVENTS", "6000"),
        "RECSYS_DURABILITY_BATCH": "250",
    }
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "durability_bench.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0 and last.startswith("PASS") and "0 lost, 0 duplicated" in last, (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("load"), users=400, items=200, events=12_000)


def test_swaps_under_load_lose_no_request(env):
    from pipelines import tracking
    from pipelines.train import train

    settings = settings_for(env)
    v2 = train(settings, training_config(alias=None, seed=11)).version
    client = tracking.setup(settings)
    name = settings.registered_model_name
    with live_server(env, extra_env={"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"}) as base:
        stop = threading.Event()
        results = {"ok": 0, "failed": [], "versions": set()}
        lock = threading.Lock()

        def hammer(n: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        r = http.get(f"/users/u{(i * 7 + n) % 400}/recommendations", params={"k": 10})
                        ok = r.status_code == 200 and len(r.json()["items"]) == 10
                    except httpx.HTTPError as exc:
                        ok, r = False, exc
                    with lock:
                        if ok:
                            results["ok"] += 1
                            results["versions"].add(r.json()["model_version"])
                        else:
                            results["failed"].append(str(getattr(r, "status_code", r)))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(3)]
        for t in threads:
            t.start()
        swaps = 0
        try:
            for i in range(10):
                target = v2 if i % 2 == 0 else "1"
                tracking.set_alias(client, name, "production", target)
                r = httpx.post(f"{base}/admin/reload", headers={"X-API-Key": KEY}, timeout=120)
                assert r.status_code == 200, r.text
                assert r.json()["served"]["production"] == target
                swaps += r.json()["results"]["production"]["swapped"]
                time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert swaps == 10
        assert results["failed"] == [], results["failed"][:10]
        assert results["ok"] > 50 and results["versions"] == {"1", v2}
        metrics = httpx.get(f"{base}/metrics").text
        assert 'recsys_model_swaps_total{alias="production"} 11.0' in metrics  # initial load + 10


def test_alias_poller_picks_up_new_version(env):
    from pipelines import tracking

    settings = settings_for(env)
    client = tracking.setup(settings)
    tracking.set_alias(client, settings.registered_model_name, "production", "1")
    with live_server(env, extra_env={"RECSYS_RELOAD_POLL_SECONDS": "1"}) as base:
        assert httpx.get(f"{base}/health").json()["model_version"] == "1"
        tracking.set_alias(client, settings.registered_model_name, "production", "2")
        deadline = time.time() + 60
        while httpx.get(f"{base}/health").json()["model_version"] != "2":
            assert time.time() < deadline, "the poller did not swap in version 2"
            time.sleep(0.5)
    tracking.set_alias(client, settings.registered_model_name, "production", "1")


def test_catalog_changes_apply_across_workers(env):
    with live_server(
        env,
        workers=2,
        extra_env={"RECSYS_API_KEYS": KEY, "RECSYS_RELOAD_POLL_SECONDS": "0"},
    ) as base:
        top = [
            i["item_id"]
            for i in httpx.get(f"{base}/users/someone-new/recommendations", params={"k": 5}).json()["items"]
        ]
        victim = top[0]
        # /ready answered from one worker; the other may still be loading its model.
        pids: set[int] = set()
        deadline = time.time() + 60
        while len(pids) < 2 and time.time() < deadline:
            pids.add(httpx.get(f"{base}/health").json()["pid"])
        assert len(pids) == 2, "both workers should answer"
        assert httpx.delete(f"{base}/items/{victim}", headers={"X-API-Key": KEY}).status_code == 200
        answered = set()
        for _ in range(40):
            answered.add(httpx.get(f"{base}/health").json()["pid"])
            body = httpx.get(f"{base}/users/someone-new/recommendations", params={"k": 50}).json()
            assert victim not in [i["item_id"] for i in body["items"]]
            sims = httpx.get(f"{base}/items/{top[1]}/similar", params={"k": 100}).json()
            assert victim not in [i["item_id"] for i in sims["items"]]
        assert answered == pids


def test_workers_share_connections_opened_together(env):
    """`recsys serve --workers 2`: each worker listens on its own SO_REUSEPORT socket, so a pool
    of keep-alive connections opened at once is spread over both workers (on one shared socket
    whichever worker woke first accepted them all, and the other idled)."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    with live_server(env, workers=2, extra_env={"RECSYS_RELOAD_POLL_SECONDS": "0"}) as base:
        ready: set[int] = set()  # /ready answered from one worker; wait for the other's model
        deadline = time.time() + 60
        while len(ready) < 2 and time.time() < deadline:
            ready.add(httpx.get(f"{base}/health").json()["pid"])
        assert len(ready) == 2, "both workers should answer"
        clients = [httpx.Client(base_url=base, timeout=30) for _ in range(32)]
        try:
            with ThreadPoolExecutor(len(clients)) as pool:
                first = list(pool.map(lambda c: c.get("/health").json()["pid"], clients))
                again = list(pool.map(lambda c: c.get("/health").json()["pid"], clients))
        finally:
            for client in clients:
                client.close()
        assert again == first  # keep-alive: each connection stays with the worker that accepted it
        per_worker = Counter(first)
        assert set(per_worker) == ready and min(per_worker.values()) >= 6, per_worker
