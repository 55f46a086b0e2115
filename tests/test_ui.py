"""The operator dashboard (/ui) in a real headless browser over real HTTP.

One trained store for the module (generated data, two versions behind ``production`` and
``challenger`` with an A/B split, the model cards training writes, attributed events) and one
``recsys serve`` on it; a second server requires read keys. Chromium is Debian's
(/usr/bin/chromium, installed by .ci/run), driven by Playwright — never ``playwright install``.
Screenshots of each page go to the test's temp folder; with RECSYS_UI_SCREENSHOTS_TO_DOCS=1
they also go to docs/ (the README's pictures).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pandas as pd
import pytest
from harness import ROOT, prepare, settings_for, training_config
from servers import serve_process

from feature_store import FeatureStore
from feature_store.impressions import Impression
from pipelines import tracking
from recsys.evaluation.online import OUTCOMES, variant_stats

CHROMIUM = Path(os.environ.get("RECSYS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
KEY = "ui-test-key"
MODES = ("collaborative", "content", "hybrid")


# ---- fast tests: TestClient, no browser -------------------------------------------------------------
def _client(data_dir: Path, **settings):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from recsys.settings import Settings

    return TestClient(create_app(Settings(data_dir=data_dir, reload_poll_seconds=0, **settings)))


def test_empty_deployment_says_what_to_do(tmp_path):
    with _client(tmp_path / "empty") as client:
        overview = client.get("/ui")
        assert overview.status_code == 200
        assert "no model yet: run <code>recsys train</code>" in overview.text
        assert "no events yet" in overview.text and "no pipeline runs yet" in overview.text
        assert "no model yet: run <code>recsys train</code>" in client.get("/ui/models").text
        assert "no impressions logged yet" in client.get("/ui/ab").text
        user = client.get("/ui/users/u1")
        assert user.status_code == 200 and "is not in the store" in user.text and "no model yet" in user.text
        bad = client.get("/ui/users/u1", params={"k": "0"})
        assert bad.status_code == 422 and "k: " in bad.text  # the form field is named, as the API names it
        assert client.get("/ui/users/u1", params={"mode": "sideways"}).status_code == 422
        assert client.get("/ui/items/i1").status_code == 404
        assert client.get("/ui/models/1").status_code == 404


def test_read_key_rules_and_cookie(tmp_path):
    with _client(tmp_path / "keys", api_keys=KEY, reads_require_key=True) as client:
        refused = client.get("/ui")
        assert refused.status_code == 401 and 'name="key"' in refused.text and "items (" not in refused.text
        assert refused.headers["www-authenticate"] == "APIKey"
        assert client.get("/ui/ab", headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.get("/ui/ab", headers={"X-API-Key": KEY}).status_code == 200
        bad = client.post(
            "/ui/key", content="key=wrong&next=/ui/ab", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert bad.status_code == 403 and "ui_key" not in bad.headers.get("set-cookie", "")
        good = client.post(
            "/ui/key",
            content=f"key={KEY}&next=https://evil.example/",
            headers={"content-type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        assert good.status_code == 303 and good.headers["location"] == "/ui"  # no open redirect
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
        assert client.get("/ui/ab").status_code == 200  # the cookie now opens the pages
        # ... and only the pages: the JSON API still wants the header
        assert client.get("/users/u1/recommendations").status_code in (401, 503)
        client.post("/ui/key/forget")
        assert client.get("/ui/ab").status_code == 401


def test_dashboard_store_reads(db_url):
    """The store reads behind the pages, on SQLite and PostgreSQL, against pandas on the same data."""
    import pandas as pd

    from recsys.datasets.synthetic import generate_synthetic

    data = generate_synthetic(n_users=80, n_items=40, n_events=1500, seed=5)
    store = FeatureStore(db_url, offline_uri="")
    try:
        store.ingest(data)
        store.delete_item("i3")
        counts = store.counts()
        assert (counts.items, counts.available_items, counts.users, counts.events) == (
            len(data.items),
            len(data.items) - 1,
            len(data.users),
            len(data.events),
        )
        ev = data.events.assign(day=data.events["timestamp"].dt.floor("D"))
        expected = ev.groupby("day").size()
        per_day = store.events_per_day()
        assert per_day.index.equals(pd.DatetimeIndex(expected.index)) and per_day.tolist() == expected.tolist()
        item = ev[ev["item_id"] == "i7"].groupby("day").size()
        assert store.events_per_day("i7").tolist() == item.tolist()
        assert store.events_per_day("no-such-item").empty

        mine = ev[ev["user_id"] == "u4"].sort_values("timestamp", ascending=False)
        timeline, total = store.user_timeline("u4", limit=5)
        assert total == len(mine) and len(timeline) == min(5, len(mine))
        assert [e.item_id for e in timeline] == mine["item_id"].head(5).tolist()
        titles = dict(zip(data.items["item_id"], data.items["title"]))
        assert all(e.title == titles[e.item_id] and e.categories for e in timeline)
        assert store.user_timeline("nobody") == ([], 0)

        sizes = ev.groupby("user_id").size()
        top = store.active_users(3)
        assert [u.events for u in top] == sorted(sizes, reverse=True)[:3]
        assert all(sizes[u.user_id] == u.events for u in top)
    finally:
        store.dispose()


def test_markdown_keeps_raw_html_out_and_rewrites_files():
    from api.ui.render import markdown

    html = str(
        markdown(
            "# t\n\n<script>x()</script> ![p](plot.png) [f](../secret.csv) [j](javascript:alert(1))",
            lambda n: "/f/" + n if n == "plot.png" else None,
        )
    )
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'src="/f/plot.png"' in html and "secret.csv" not in html.split("<a")[1].split(">")[0]
    assert "javascript:" not in html.replace("[j](javascript:alert(1))", "")


# ---- the browser tests ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Generated data, v1 (production) and v2 (challenger); each with the model card training writes, A/B events."""

    from experiments.runner import run_experiment
    from experiments.spec import parse_spec
    from pipelines.config import PipelineConfig
    from pipelines.pipeline import run_pipeline
    from pipelines.train import train

    data_dir = tmp_path_factory.mktemp("ui-data")
    env = prepare(data_dir, users=300, items=150, events=8000, clusters=5, content="tfidf")
    settings = settings_for(env)
    second = train(settings, training_config(factors=16, iterations=4, alias="challenger", seed=3, content="tfidf"))
    # a pipeline run whose weak candidate the gate rejects (registered as v3, alias untouched)
    weak = {"kind": "als", "params": {"factors": 1, "iterations": 1}}
    pipeline = run_pipeline(
        settings,
        PipelineConfig.model_validate(
            {"name": "nightly", "models": [weak], "evaluation": {"eval_users": 200}, "index": {"n_trees": 10}}
        ),
        run_id="ui-weak",
    )
    assert pipeline.status == "rejected", pipeline.reason
    # an experiment comparison (its report is an artifact of the parent run)
    spec = parse_spec(
        {
            "name": "ui-compare",
            "dataset": {"format": "synthetic", "params": {"n_users": 200, "n_items": 80, "n_events": 3000}},
            "split": {"method": "random", "test_ratio": 0.2},
            "k": [10],
            "models": [{"kind": "als", "params": {"factors": 8, "iterations": 3}}, {"kind": "popular"}],
        }
    )
    run_experiment(spec, settings, report_dir=tmp_path_factory.mktemp("report"))
    store = FeatureStore(settings.database_url)
    events, shown = [], []
    for i in range(60):
        variant = "production:1" if i % 2 else f"challenger:{second.version}"
        when = f"2025-12-31T{i % 24:02d}:30:00Z"  # the last day of the generated data
        shown.append(
            Impression(
                f"ui-{i}",
                f"u{i}",
                "user",
                variant.split(":")[1],
                variant,
                pd.Timestamp(when).value // 1_000_000,
                (f"i{i % 20}", f"i{i % 7}"),
            )
        )
        click = {"user_id": f"u{i}", "item_id": f"i{i % 20}", "event_type": "click", "variant": variant}
        events.append({**click, "timestamp": when, "request_id": f"ui-{i}"})
        if i % 3 == 0:
            events.append(
                {
                    "user_id": f"u{i}",
                    "item_id": f"i{i % 7}",
                    "event_type": "purchase",
                    "variant": variant,
                    "timestamp": when,
                    "request_id": f"ui-{i}",
                }
            )
    store.add_impressions(shown)
    store.add_events(events)
    store.dispose()
    env = {**env, "RECSYS_API_KEYS": KEY, "RECSYS_AB_SPLIT": "production=0.5,challenger=0.5"}
    return env, settings, second.version, pipeline.version


@pytest.fixture(scope="module")
def server(deployment, tmp_path_factory):
    env, *_ = deployment
    with serve_process(env, log_path=tmp_path_factory.mktemp("serve") / "serve.log") as proc:
        yield proc.url


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} is missing")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Tab:
    """A page that records console errors and uncaught exceptions, and saves screenshots."""

    def __init__(self, browser, shots: Path, **context):
        self.context = browser.new_context(viewport={"width": 1400, "height": 900}, **context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.shots = shots

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"dashboard-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("RECSYS_UI_SCREENSHOTS_TO_DOCS") == "1":  # the README's pictures: the first screen
            (ROOT / "docs").mkdir(exist_ok=True)
            self.page.screenshot(path=str(ROOT / "docs" / path.name))

    def close(self) -> None:
        self.context.close()


def _column(page, mode_or_version: str, attr: str = "data-mode") -> list[str]:
    return page.locator(f"section.recs[{attr}='{mode_or_version}'] tr[data-item]").evaluate_all(
        "rows => rows.map(r => r.dataset.item)"
    )


def _scores(page, mode: str) -> list[str]:
    return page.locator(f"section.recs[data-mode='{mode}'] td.score").all_inner_texts()


def _ids(body: dict) -> list[str]:
    return [i["item_id"] for i in body["items"]]


@pytest.mark.slow
def test_click_through_the_dashboard(server, deployment, browser, tmp_path):
    env, settings, v2, v3 = deployment
    store = FeatureStore(settings.database_url)
    api = httpx.Client(base_url=server, timeout=30)
    tab = Tab(browser, tmp_path)
    page = tab.page
    try:
        # -- overview: counts from the store, the alias table from the registry
        response = page.goto(f"{server}/ui")
        assert response.status == 200
        counts = store.counts()
        assert page.locator("#count-events").inner_text() == f"{counts.events:,}"
        assert page.locator("#count-users").inner_text() == f"{counts.users:,}"
        assert page.locator("#count-items").inner_text() == f"{counts.items:,}"
        rows = {
            r["version"]: r for r in tracking.list_versions(tracking.setup(settings), settings.registered_model_name)
        }
        production = page.locator("#aliases tr[data-alias='production']")
        assert "v1" in production.inner_text()
        assert f"{rows['1']['metrics']['ndcg_at_10']:.4f}" in production.inner_text()
        assert f"v{v2}" in page.locator("#aliases tr[data-alias='challenger']").inner_text()
        assert page.locator("svg.plot").count() == 1  # events per day
        run = page.locator("#pipeline-runs tbody tr").first
        assert "ui-weak" in run.inner_text() and "rejected" in run.inner_text() and f"v{v3}" in run.inner_text()
        assert "ndcg_at_10" in run.inner_text()  # the gate's reason
        tab.shot("overview")

        # -- user: click the most active user; every mode's list is the JSON API's answer
        first_user = page.locator("#active-users a.user-link").first
        user_id = first_user.inner_text()
        first_user.click()
        page.wait_for_url(re.compile(rf"/ui/users/{user_id}$"))
        history, total = store.user_timeline(user_id, 25)
        assert f"{total} events" in page.locator(".history h2").inner_text()
        assert page.locator("#history tr[data-item]").first.get_attribute("data-item") == history[0].item_id
        assert history[0].title in page.locator("#history tbody tr").first.inner_text()
        for mode in MODES:
            body = api.get(f"/users/{user_id}/recommendations", params={"mode": mode, "k": 10}).json()
            assert _column(page, mode) == _ids(body), mode
            assert _scores(page, mode) == [f"{i['score']:.4f}" for i in body["items"]], mode
            section = page.locator(f"section.recs[data-mode='{mode}']")
            assert body["items"][0]["title"] in section.inner_text()
            assert body["items"][0]["reason"] in section.inner_text()
            assert f"v{body['model_version']}" in section.locator("h3").inner_text()
        tab.shot("user")

        # -- switch mode and k with the form: only that mode, k rows, still the API's answer
        page.select_option("#rec-form select[name=mode]", "content")
        page.fill("#rec-form input[name=k]", "5")
        page.click("#rec-form button[type=submit]")
        page.wait_for_url(re.compile(r"mode=content"))
        assert page.locator("section.recs").count() == 1
        body = api.get(f"/users/{user_id}/recommendations", params={"mode": "content", "k": 5}).json()
        assert _column(page, "content") == _ids(body)

        # -- compare the two versions for this user
        page.select_option("#rec-form select[name=mode]", "collaborative")
        page.fill("#rec-form input[name=k]", "10")
        page.select_option("select[name=version_a]", "1")
        page.select_option("select[name=version_b]", v2)
        page.click("#rec-form button[type=submit]")
        page.wait_for_url(re.compile(r"version_b="))
        params = {"mode": "collaborative", "k": 10}
        a = _ids(api.get(f"/users/{user_id}/recommendations", params={**params, "model_version": "1"}).json())
        b = _ids(api.get(f"/users/{user_id}/recommendations", params={**params, "model_version": v2}).json())
        comparison = page.locator("#comparison")
        assert _column(comparison, "1", "data-version") == a
        assert _column(comparison, v2, "data-version") == b
        assert comparison.locator(".overlap").inner_text() == str(len(set(a) & set(b)))
        assert comparison.locator(".new-count").inner_text() == str(len(set(b) - set(a)))
        new_rows = comparison.locator(f"section.recs[data-version='{v2}'] tr.only").evaluate_all(
            "rows => rows.map(r => r.dataset.item)"
        )
        assert new_rows == [i for i in b if i not in a]
        tab.shot("compare")
        # a version this worker has not loaded: like ?model_version=, loading it needs a key
        url = f"{server}/ui/users/{user_id}?mode=collaborative&version_a=1&version_b={v3}"
        page.goto(url)
        assert "loading it needs an API key" in page.locator("#comparison").inner_text()
        keyed = Tab(browser, tmp_path, extra_http_headers={"X-API-Key": KEY})
        try:
            keyed.page.goto(url)
            pinned = _ids(api.get(f"/users/{user_id}/recommendations", params={**params, "model_version": v3}).json())
            assert _column(keyed.page.locator("#comparison"), v3, "data-version") == pinned
            assert keyed.errors == []
        finally:
            keyed.close()
        page.goto(f"{server}/ui/users/{user_id}?mode=collaborative&version_a=1&version_b={v2}")

        # -- click a recommendation: the item page
        link = page.locator("section.recs[data-mode='collaborative'] a.item-link").first
        item_id = page.locator("section.recs[data-mode='collaborative'] tr[data-item]").first.get_attribute("data-item")
        link.click()
        page.wait_for_url(re.compile(rf"/ui/items/{item_id}$"))
        item = api.get(f"/items/{item_id}").json()
        assert page.locator("#item-title").inner_text() == item["title"]
        assert page.locator("#item-events").inner_text() == f"{int(store.events_per_day(item_id).sum())} events"
        for mode in MODES:
            body = api.get(f"/items/{item_id}/similar", params={"mode": mode, "k": 10}).json()
            assert _column(page, mode) == _ids(body), mode
        tab.shot("item")

        # -- click a similar item, then switch its mode
        similar = page.locator("section.recs[data-mode='hybrid'] tr[data-item]").first.get_attribute("data-item")
        page.locator("section.recs[data-mode='hybrid'] a.item-link").first.click()
        page.wait_for_url(re.compile(rf"/ui/items/{similar}$"))
        assert page.locator("#item-title").inner_text() == api.get(f"/items/{similar}").json()["title"]
        page.select_option("#similar-form select[name=mode]", "content")
        page.click("#similar-form button[type=submit]")
        page.wait_for_url(re.compile(r"mode=content"))
        assert page.locator("section.recs").count() == 1
        assert _column(page, "content") == _ids(api.get(f"/items/{similar}/similar", params={"mode": "content"}).json())

        # -- models: registry metrics, the nDCG plot, the card of v2, the empty state of v1
        page.click("nav a[href='/ui/models']")
        page.wait_for_url(re.compile(r"/ui/models$"))
        for version, row in rows.items():
            cell = page.locator(f"#versions tr[data-version='{version}'] td.metric-ndcg_at_10").inner_text()
            assert cell == f"{row['metrics']['ndcg_at_10']:.4f}"
        assert page.locator("svg.plot[aria-label='nDCG@10 over versions']").count() == 1
        assert "rejected" in page.locator(f"#versions tr[data-version='{v3}']").inner_text()
        tab.shot("models")
        # the experiment comparison: its report with the plots it references
        page.locator("#reports a").first.click()
        page.wait_for_url(re.compile(r"/ui/experiments/"))
        metrics_table = page.locator(".markdown table").nth(1).inner_text()  # the first is the context
        assert "popular" in metrics_table and "als" in metrics_table and "ndcg_at_10" in metrics_table
        plot = page.locator(".markdown img").first
        plot.wait_for()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 0")
        tab.shot("experiment")
        page.goto(f"{server}/ui/models")
        page.click(f"#versions a[href='/ui/models/{v2}']")
        page.wait_for_url(re.compile(rf"/ui/models/{v2}$"))
        # the card `recsys train` wrote for the version (pipelines.card): its figures and plots
        from pipelines.card import load_model_card

        for version in (str(v2), "1"):
            if version != str(v2):
                page.goto(f"{server}/ui/models/{version}")
            written = load_model_card(settings, version)
            card = page.locator("#model-card")
            assert f"Model card: recsys version {version}" in card.inner_text()
            assert f"{written.bias.item.amplification:.4f}" in card.inner_text()
            plots = card.locator("img")
            plots.first.wait_for()
            assert plots.count() >= 2
            assert all(
                plots.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(plots.count())
            )
            if version == str(v2):
                tab.shot("model-card")

        # -- A/B: per variant users, events and rates as the report computes them
        page.click("nav a[href='/ui/ab']")
        page.wait_for_url(re.compile(r"/ui/ab$"))
        # the fixture's two variants, and the lists this tour was served (pinned versions) too
        stats = variant_stats(store.exposure_counts(OUTCOMES), OUTCOMES)
        assert {"production:1", f"challenger:{v2}"} <= {s.variant for s in stats}
        for s in stats:
            row = page.locator(f"#ab-table tr[data-variant='{s.variant}']")
            assert row.locator("td.users").inner_text() == str(s.users)
            assert row.locator("td.impressions").inner_text() == str(s.impressions)
            assert row.locator("td.rate-click").inner_text() == f"{100 * s.rates['click']:.2f}%"
            low, high = s.intervals["purchase"]
            assert row.locator("td.ci-purchase").inner_text() == f"{100 * low:.2f}% – {100 * high:.2f}%"
        assert page.locator("svg.plot").count() == 2
        tab.shot("ab")

        # the one button that writes: POST /admin/reload with the key typed next to it
        page.goto(f"{server}/ui")
        admin = page.locator("form[data-admin='/admin/reload']")
        admin.locator("input[name=key]").fill("wrong")
        admin.locator("button").click()
        page.wait_for_function("() => document.querySelector('form[data-admin] output').textContent.startsWith('403')")
        tab.errors = [e for e in tab.errors if "403" not in e]  # the refused fetch is logged by the browser
        admin.locator("input[name=key]").fill(KEY)
        admin.locator("button").click()
        page.wait_for_function("() => document.querySelector('form[data-admin] output').textContent.startsWith('done')")
        assert '"production":"1"' in admin.locator("output").inner_text()

        assert tab.errors == [], tab.errors
    finally:
        tab.close()
        api.close()
        store.dispose()


@pytest.mark.slow
def test_key_protected_deployment_refuses_pages_without_a_key(deployment, browser, tmp_path):
    env, *_ = deployment
    protected = {**env, "RECSYS_READS_REQUIRE_KEY": "true"}
    with serve_process(protected, log_path=tmp_path / "serve.log") as proc:
        tab = Tab(browser, tmp_path)
        page = tab.page
        try:
            for path in ("/ui", "/ui/users/u1", "/ui/items/i1", "/ui/models", "/ui/ab"):
                response = page.goto(proc.url + path)
                assert response.status == 401, path
                assert page.locator("input[name=key]").count() == 1
                assert page.locator("#count-events, section.recs, #versions, #ab-table").count() == 0
            tab.shot("key")
            page.fill("input[name=key]", "not-the-key")
            page.click("form[action='/ui/key'] button")
            assert "the API key is not valid" in page.locator(".error").inner_text()
            page.fill("input[name=key]", KEY)
            page.click("form[action='/ui/key'] button")
            page.wait_for_url(re.compile(r"/ui/ab$"))
            assert page.locator("#ab-table").count() == 1
            # the key as the API takes it: the X-API-Key header
            header_tab = Tab(browser, tmp_path, extra_http_headers={"X-API-Key": KEY})
            try:
                assert header_tab.page.goto(proc.url + "/ui").status == 200
                assert header_tab.page.locator("#count-events").count() == 1
            finally:
                header_tab.close()
            # console errors: only the refused page loads themselves
            assert all("401" in e or "403" in e for e in tab.errors), tab.errors
        finally:
            tab.close()
