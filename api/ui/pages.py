"""The dashboard's pages under ``/ui`` (server-rendered; see api/ui/__init__.py).

Every page reads: the store through its read methods, the registry through
``pipelines.tracking``, answers through the same functions as the JSON API
(``answer_user``/``answer_similar``), so what a page shows is what the API answers. Nothing
here writes; the one form that posts (``/ui/key``) only sets the key cookie.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qs, quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError

from api.errors import ApiError
from api.query import list_fields
from api.routes.recommendations import SimilarQuery, UserQuery, answer_similar, answer_user
from api.serving import LoadedModel, LoaderBusy, ModelHolder, ModelNotReady, ReloadError, UnknownVersion
from api.ui import plots
from api.ui.access import COOKIE, COOKIE_PATH, UiAccess, ui_access
from api.ui.render import markdown, page
from api.ui.views import (
    MAIN_METRICS,
    Comparison,
    RecItem,
    RecList,
    VersionView,
    run_url,
    version_view,
    with_bundle_facts,
)
from feature_store import FeatureStore
from pipelines import tracking
from recsys.evaluation.online import OUTCOMES, variant_stats
from recsys.ranking import MODES, SearchUnavailable, UnknownItemError
from recsys.settings import Settings
from recsys.validation import id_problem

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)
Access = Annotated[UiAccess, Depends(ui_access)]
T = TypeVar("T")

#: files of a run's artifact folder the dashboard serves (model cards, experiment reports)
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,200}\.(png|csv|json|md)$")
RUN_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
VERSION = re.compile(r"^[0-9]{1,18}$")
HISTORY_ROWS = 25
#: registry listings are re-read at most this often per worker (every page shows them)
REGISTRY_TTL_SECONDS = 5.0


class UiNotFound(Exception):
    """Answered with the not-found page (404)."""


# ---- helpers --------------------------------------------------------------------------------
def _state(request: Request) -> tuple[Settings, FeatureStore, ModelHolder]:
    s = request.app.state
    return s.settings, s.store, s.holder


def _html(request: Request, template: str, access: UiAccess, status: int = 200, **context: Any) -> HTMLResponse:
    settings, _, holder = _state(request)
    body = page(
        template,
        request_path=request.url.path,
        access=access,
        reads_require_key=settings.reads_require_key,
        served=holder.served(),
        **context,
    )
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


async def _io(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


class RegistryCache:
    """``tracking.list_versions`` of the served model name, re-read at most every
    REGISTRY_TTL_SECONDS per worker (every page shows it; one read is a query per version)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: list[dict[str, Any]] = []
        self._at = -math.inf

    def rows(self, settings: Settings, holder: ModelHolder) -> list[dict[str, Any]]:
        with self._lock:
            if time.monotonic() - self._at < REGISTRY_TTL_SECONDS:
                return self._rows
            try:
                self._rows = tracking.list_versions(holder.client(), settings.registered_model_name)
            except Exception as exc:  # an unreachable tracking server must not take the pages down
                logger.warning("dashboard: could not list registry versions: %s", exc)
                self._rows = []
            self._at = time.monotonic()
            return self._rows


def _registry(request: Request) -> list[dict[str, Any]]:
    settings, _, holder = _state(request)
    return request.app.state.ui_registry.rows(settings, holder)


def _versions(request: Request) -> list[VersionView]:
    settings = request.app.state.settings
    return [version_view(r, settings) for r in _registry(request)]


def _form(params, model: type[BaseModel], skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], str | None]:
    """The non-empty query parameters that are fields of ``model`` (lists as lists), and the
    first validation problem, named by field, or None."""
    data: dict[str, Any] = {}
    lists = list_fields(model)
    for name in model.model_fields:
        if name in skip:
            continue
        if name in lists:
            values = [v for v in params.getlist(name) if v != ""]
            if values:
                data[name] = values
        elif params.get(name, "") != "":
            data[name] = params[name]
    try:
        model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        return data, f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    return data, None


def _check_id(value: str, field: str) -> None:
    problem = id_problem(value)
    if problem:
        raise ApiError(422, field, problem)


def _api_url(path: str, data: dict[str, Any]) -> str:
    return f"{path}?{urlencode(data, doseq=True)}" if data else path


def _rec_items(answer_items, catalog: dict[str, list[str]]) -> list[RecItem]:
    return [
        RecItem(
            rank=i + 1,
            item_id=it.item_id,
            title=it.title,
            score=it.score,
            reason=it.reason,
            categories=catalog.get(it.item_id, []),
        )
        for i, it in enumerate(answer_items)
    ]


def _categories(store: FeatureStore, ids: list[str]) -> dict[str, list[str]]:
    if not ids:
        return {}
    frame = store.items_by_ids(sorted(set(ids)))
    return dict(zip(frame["item_id"], frame["categories"]))


def _with_loaded(holder: ModelHolder, view: VersionView) -> VersionView:
    """The registry's view, completed from the bundle when this worker has the version loaded."""
    model = holder.loaded_version(view.version)
    return with_bundle_facts(view, model.recommender.bundle.info) if model is not None else view


def _model_modes(holder: ModelHolder) -> tuple[str, ...]:
    try:
        return holder.current.recommender.modes
    except ModelNotReady:
        return ()


def _all_categories(holder: ModelHolder) -> list[str]:
    try:
        cats = holder.current.recommender.categories
    except ModelNotReady:
        return []
    return sorted(set().union(*cats)) if cats else []


async def _pinned(holder: ModelHolder, version: str, access: UiAccess) -> tuple[LoadedModel | None, str | None]:
    """A version for a comparison: loaded already, or loaded now when the request carries a key
    (the API's rule for ``?model_version=``). Returns (model, problem)."""
    model = holder.loaded_version(version)
    if model is not None:
        return model, None
    if not access.has_key:
        return None, f"version {version} is not loaded in this worker; loading it needs an API key (enter one above)"
    try:
        return await holder.load_pinned(version), None
    except UnknownVersion:
        return None, f"no model version {version}"
    except LoaderBusy as exc:
        return None, str(exc)
    except ReloadError as exc:
        return None, exc.reason


# ---- the key form -----------------------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    return target if target and target.startswith("/ui") and not target.startswith("//") else "/ui"


@router.get("/key", response_class=HTMLResponse)
async def key_form(request: Request, next: str = "/ui") -> HTMLResponse:
    return HTMLResponse(
        page(
            "key.html",
            status=None,
            message=None,
            next=_safe_next(next),
            request_path=request.url.path,
            access=UiAccess(None),
            reads_require_key=request.app.state.settings.reads_require_key,
            served={},
        ),
        headers={"Cache-Control": "no-store"},
    )


@router.post("/key")
async def key_submit(request: Request) -> Response:
    """Check a key typed into the key form and keep it in an HttpOnly cookie for the pages."""
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    key = (form.get("key") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/ui"])[0])
    if not key or not request.app.state.keys.valid(key):
        status = 401 if not key else 403
        return HTMLResponse(
            page(
                "key.html",
                status=status,
                message="enter an API key" if not key else "the API key is not valid",
                next=target,
                request_path=request.url.path,
                access=UiAccess(None),
                reads_require_key=request.app.state.settings.reads_require_key,
                served={},
            ),
            status_code=status,
        )
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, key, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/key/forget")
async def key_forget() -> Response:
    response = RedirectResponse("/ui", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response


# ---- overview -----------------------------------------------------------------------------------
@router.get("", response_class=HTMLResponse)
async def overview(request: Request, access: Access) -> HTMLResponse:
    settings, store, holder = _state(request)

    def gather() -> dict[str, Any]:
        counts = store.counts()
        per_day = store.events_per_day()
        versions = [_with_loaded(holder, v) for v in _versions(request)]
        by_version = {v.version: v for v in versions}
        aliases = sorted(
            ((a, v) for v in versions for a in v.aliases), key=lambda av: (av[0] != settings.model_alias, av[0])
        )
        try:
            runs = tracking.pipeline_runs(holder.client(), settings, limit=8)
        except Exception as exc:
            logger.warning("dashboard: could not list pipeline runs: %s", exc)
            runs = []
        popular = store.item_popularity(limit=10)
        titles = store.items_by_ids(list(popular.index)).set_index("item_id")["title"].to_dict() if len(popular) else {}
        return dict(
            counts=counts,
            events_plot=plots.events_over_time(per_day, "events per day"),
            first_day=per_day.index.min() if len(per_day) else None,
            last_day=per_day.index.max() if len(per_day) else None,
            aliases=aliases,
            versions_count=len(versions),
            by_version=by_version,
            runs=runs,
            active_users=store.active_users(10),
            popular=[(i, titles.get(i, ""), int(n)) for i, n in popular.items()],
        )

    data = await _io(gather)
    return _html(request, "overview.html", access, title="Overview", model_alias=settings.model_alias, **data)


# ---- users ------------------------------------------------------------------------------------
@router.get("/users")
async def find_user(user_id: str = "") -> Response:
    return RedirectResponse(f"/ui/users/{quote(user_id.strip(), safe='')}" if user_id.strip() else "/ui", 303)


@router.get("/users/{user_id}", response_class=HTMLResponse)
async def user_page(request: Request, user_id: str, access: Access) -> HTMLResponse:
    _check_id(user_id, "user_id")
    settings, store, holder = _state(request)
    params = request.query_params
    data, problem = _form(params, UserQuery, skip=("mode", "offset", "exclude_item"))
    selected = params.get("mode") or "all"
    modes = _model_modes(holder)
    if selected != "all" and selected not in MODES:
        problem = problem or f"mode: must be all or one of {', '.join(MODES)}"
        selected = "all"
    show = [m for m in modes if selected in ("all", m)]
    path = f"/users/{quote(user_id, safe='')}/recommendations"
    lists: list[RecList] = []
    if problem is None and modes:
        for mode in show:
            query = UserQuery.model_validate({**data, "mode": mode})
            rec = RecList(heading=mode, mode=mode, api_url=_api_url(path, {**data, "mode": mode}))
            try:
                answer = await answer_user(holder, user_id, query, None)
            except (SearchUnavailable, ApiError) as exc:
                rec.error = exc.message if isinstance(exc, ApiError) else str(exc)
            else:
                rec.model_version, rec.variant, rec.strategy = answer.model_version, answer.variant, answer.strategy
                rec.items = answer.items  # replaced by RecItems below
            lists.append(rec)

    comparison = None
    version_a, version_b = params.get("version_a", ""), params.get("version_b", "")
    if version_a or version_b:
        comparison = Comparison(version_a, version_b)
        if not (VERSION.match(version_a) and VERSION.match(version_b)):
            comparison.error = "choose two registry versions to compare"
        elif problem is None and modes:
            mode = selected if selected != "all" else None
            query = UserQuery.model_validate({**data, **({"mode": mode} if mode else {})})
            answers = []
            for v in (version_a, version_b):
                model, why = await _pinned(holder, v, access)
                rec = RecList(
                    heading=f"version {v}",
                    mode=mode,
                    model_version=v,
                    api_url=_api_url(path, {**data, **({"mode": mode} if mode else {}), "model_version": v}),
                )
                if model is None:
                    rec.error = why
                else:
                    try:
                        answer = await answer_user(holder, user_id, query, model)
                    except (SearchUnavailable, ApiError) as exc:
                        rec.error = exc.message if isinstance(exc, ApiError) else str(exc)
                    else:
                        rec.variant, rec.strategy, rec.mode = answer.variant, answer.strategy, answer.mode
                        rec.items = answer.items
                answers.append(rec)
            comparison.a, comparison.b = answers

    def gather() -> dict[str, Any]:
        user = store.get_user(user_id)
        timeline, total = store.user_timeline(user_id, HISTORY_ROWS)
        ids = [it.item_id for rec in lists for it in rec.items]
        if comparison is not None:
            ids += [it.item_id for rec in (comparison.a, comparison.b) if rec is not None for it in rec.items]
        return dict(
            user=user,
            timeline=timeline,
            total=total,
            catalog=_categories(store, ids),
            versions=[v.version for v in _versions(request)],
        )

    info = await _io(gather)
    for rec in lists:
        rec.items = _rec_items(rec.items, info["catalog"])
    if comparison is not None and comparison.a is not None and comparison.b is not None:
        a, b = comparison.a, comparison.b
        a.items, b.items = _rec_items(a.items, info["catalog"]), _rec_items(b.items, info["catalog"])
        ids_a, ids_b = {i.item_id for i in a.items}, {i.item_id for i in b.items}
        for it in a.items:
            it.only_here = it.item_id not in ids_b
        for it in b.items:
            it.only_here = it.item_id not in ids_a
        comparison.overlap = len(ids_a & ids_b)
        comparison.jaccard = len(ids_a & ids_b) / len(ids_a | ids_b) if ids_a | ids_b else 1.0
        comparison.new_in_b = [i.item_id for i in b.items if i.only_here]
    form = dict(
        k=params.get("k", "10"),
        mode=selected,
        include_category=params.getlist("include_category"),
        exclude_category=params.getlist("exclude_category"),
        exclude_seen=params.get("exclude_seen", "true"),
        diversity=params.get("diversity", ""),
        fusion=params.get("fusion", ""),
        cf_weight=params.get("cf_weight", ""),
        content_weight=params.get("content_weight", ""),
        version_a=version_a,
        version_b=version_b,
    )
    return _html(
        request,
        "user.html",
        access,
        status=422 if problem else 200,
        title=f"User {user_id}",
        user_id=user_id,
        problem=problem,
        lists=lists,
        comparison=comparison,
        form=form,
        modes=modes,
        all_modes=MODES,
        categories=_all_categories(holder),
        model_ready=holder.ready,
        **info,
    )


# ---- items ----------------------------------------------------------------------------------------
@router.get("/items")
async def find_item(item_id: str = "") -> Response:
    return RedirectResponse(f"/ui/items/{quote(item_id.strip(), safe='')}" if item_id.strip() else "/ui", 303)


@router.get("/items/{item_id}", response_class=HTMLResponse)
async def item_page(request: Request, item_id: str, access: Access) -> HTMLResponse:
    _check_id(item_id, "item_id")
    settings, store, holder = _state(request)
    item = await _io(store.get_item, item_id)
    if item is None:
        return _html(
            request, "notfound.html", access, status=404, title="Unknown item", message=f"unknown item: {item_id}"
        )
    params = request.query_params
    data, problem = _form(params, SimilarQuery, skip=("mode", "offset", "exclude_item", "user_id"))
    selected = params.get("mode") or "all"
    if selected != "all" and selected not in MODES:
        problem = problem or f"mode: must be all or one of {', '.join(MODES)}"
        selected = "all"
    modes = _model_modes(holder)
    path = f"/items/{quote(item_id, safe='')}/similar"
    lists: list[RecList] = []
    if problem is None:
        for mode in [m for m in modes if selected in ("all", m)]:
            rec = RecList(heading=mode, mode=mode, api_url=_api_url(path, {**data, "mode": mode}))
            try:
                answer = answer_similar(holder, item_id, SimilarQuery.model_validate({**data, "mode": mode}), None)
            except UnknownItemError:
                rec.error = "this item is not in the served model (it arrived after training and has no content vector)"
            except SearchUnavailable as exc:
                rec.error = str(exc)
            else:
                rec.model_version, rec.variant, rec.strategy = answer.model_version, answer.variant, answer.strategy
                rec.items = answer.items
            lists.append(rec)

    def gather() -> dict[str, Any]:
        per_day = store.events_per_day(item_id)
        catalog = _categories(store, [it.item_id for rec in lists for it in rec.items])
        return dict(per_day=per_day, catalog=catalog)

    info = await _io(gather)
    for rec in lists:
        rec.items = _rec_items(rec.items, info["catalog"])
    per_day = info["per_day"]
    form = dict(
        k=params.get("k", "10"),
        mode=selected,
        include_category=params.getlist("include_category"),
        exclude_category=params.getlist("exclude_category"),
    )
    return _html(
        request,
        "item.html",
        access,
        status=422 if problem else 200,
        title=item["title"] or item_id,
        item=item,
        item_id=item_id,
        problem=problem,
        lists=lists,
        form=form,
        modes=modes,
        model_ready=holder.ready,
        categories=_all_categories(holder),
        events_total=int(per_day.sum()),
        popularity_plot=await _io(plots.events_over_time, per_day, f"events per day of {item_id}"),
    )


# ---- models ---------------------------------------------------------------------------------------
@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, access: Access) -> HTMLResponse:
    settings, _, holder = _state(request)

    def gather() -> dict[str, Any]:
        versions = [_with_loaded(holder, v) for v in _versions(request)]
        oldest_first = list(reversed(versions))
        series = {
            label: [v.all_metrics.get(key) for v in oldest_first]
            for key, label in (("ndcg_at_10", "nDCG@10"), ("hybrid_ndcg_at_10", "hybrid nDCG@10"))
            if any(key in v.all_metrics for v in oldest_first)
        }
        plot = plots.metric_over_versions([v.version for v in oldest_first], series, "nDCG@10 over versions")
        try:
            reports = tracking.report_runs(holder.client(), limit=20)
        except Exception as exc:
            logger.warning("dashboard: could not list experiment runs: %s", exc)
            reports = []
        return dict(versions=versions, ndcg_plot=plot, reports=reports)

    data = await _io(gather)
    return _html(
        request,
        "models.html",
        access,
        title="Models",
        metric_labels=MAIN_METRICS,
        model_name=settings.registered_model_name,
        **data,
    )


def _card_dir(request: Request, run_id: str, folder: str) -> Path | None:
    settings, _, holder = _state(request)
    return tracking.run_artifact_folder(holder.client(), run_id, folder, settings.data_dir / "ui-cache")


def _version_row(request: Request, version: str) -> VersionView | None:
    return next((v for v in _versions(request) if v.version == version), None)


@router.get("/models/{version}", response_class=HTMLResponse)
async def version_page(request: Request, version: str, access: Access) -> HTMLResponse:
    holder = request.app.state.holder
    if not VERSION.match(version):
        raise UiNotFound(f"no model version {version}")
    view = await _io(_version_row, request, version)
    if view is None:
        raise UiNotFound(f"no model version {version}")
    view = _with_loaded(holder, view)
    card_dir = await _io(_card_dir, request, view.run_id, "model_card") if view.run_id else None
    card_html = card_json = None
    extra_plots: list[str] = []
    if card_dir is not None:
        base = f"/ui/models/{version}/card/"
        files = sorted(p.name for p in card_dir.iterdir() if FILE_NAME.match(p.name))
        md = card_dir / "model_card.md"
        if md.is_file():
            card_html = markdown(md.read_text(errors="replace"), lambda n: base + n if n in files else None)
        js = card_dir / "model_card.json"
        if js.is_file():
            card_json = js.read_text(errors="replace")
        text = md.read_text(errors="replace") if md.is_file() else ""
        extra_plots = [base + n for n in files if n.endswith(".png") and n not in text]
    return _html(
        request,
        "version.html",
        access,
        title=f"Version {version}",
        v=view,
        card_html=card_html,
        card_json=card_json,
        card_found=card_dir is not None,
        extra_plots=extra_plots,
    )


def _artifact_file(request: Request, run_id: str, folder: str, name: str) -> FileResponse:
    if not FILE_NAME.match(name) or not RUN_ID.match(run_id):
        raise UiNotFound(f"no file {name}")
    root = _card_dir(request, run_id, folder)
    path = (root / name) if root is not None else None
    if path is None or not path.is_file() or path.resolve().parent != root.resolve():
        raise UiNotFound(f"no file {name}")
    return FileResponse(path, headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


@router.get("/models/{version}/card/{name}")
async def card_file(request: Request, version: str, name: str, access: Access) -> FileResponse:
    """A file of the version's model card (its plots), streamed from the run's artifacts."""
    view = await _io(_version_row, request, version) if VERSION.match(version) else None
    if view is None or not view.run_id:
        raise UiNotFound(f"no model version {version}")
    return await _io(_artifact_file, request, view.run_id, "model_card", name)


@router.get("/experiments/{run_id}", response_class=HTMLResponse)
async def experiment_page(request: Request, run_id: str, access: Access) -> HTMLResponse:
    if not RUN_ID.match(run_id):
        raise UiNotFound(f"no experiment run {run_id}")
    settings, _, holder = _state(request)
    folder = await _io(_card_dir, request, run_id, "report")
    if folder is None or not (folder / "report.md").is_file():
        raise UiNotFound(f"experiment run {run_id} has no report")
    base = f"/ui/experiments/{run_id}/files/"
    files = sorted(p.name for p in folder.iterdir() if FILE_NAME.match(p.name))
    html = markdown((folder / "report.md").read_text(errors="replace"), lambda n: base + n if n in files else None)
    run = await _io(tracking.get_run, holder.client(), run_id)
    return _html(
        request,
        "experiment.html",
        access,
        title=f"Experiment {run.info.run_name or run_id}",
        run_name=run.info.run_name or run_id,
        report_html=html,
        files=[(n, base + n) for n in files],
        run_url=run_url(settings, run.info.experiment_id, run_id),
    )


@router.get("/experiments/{run_id}/files/{name}")
async def experiment_file(request: Request, run_id: str, name: str, access: Access) -> FileResponse:
    return await _io(_artifact_file, request, run_id, "report", name)


# ---- A/B ------------------------------------------------------------------------------------------
@router.get("/ab", response_class=HTMLResponse)
async def ab_page(request: Request, access: Access) -> HTMLResponse:
    settings, store, holder = _state(request)

    def gather() -> dict[str, Any]:
        stats = variant_stats(store.exposure_counts(OUTCOMES), OUTCOMES)
        return dict(
            stats=stats,
            rates_plot=plots.ab_rates(stats, OUTCOMES, "click and purchase rate per exposed user, 95% intervals"),
            impressions_plot=plots.bars(
                [s.variant for s in stats], [s.impressions for s in stats], "impressions per variant", "impressions"
            ),
        )

    data = await _io(gather)
    return _html(
        request,
        "ab.html",
        access,
        title="A/B",
        split=holder.split,
        outcomes=OUTCOMES,
        salt_set=settings.ab_salt != "recsys-ab",
        **data,
    )


# ---- install ----------------------------------------------------------------------------------------
def not_found_response(request: Request, access: UiAccess | None, message: str) -> HTMLResponse:
    return _html(request, "notfound.html", access or UiAccess(None), status=404, title="Not found", message=message)
