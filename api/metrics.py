"""Prometheus metrics. With ``PROMETHEUS_MULTIPROC_DIR`` set (several uvicorn workers) the
values are written to that folder by every worker and ``/metrics`` aggregates them."""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

#: the method label takes these values and "other": a label value per made-up method string
#: would let any client grow /metrics without bound
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REQUEST_LATENCY = Histogram(
    "recsys_http_request_duration_seconds",
    "HTTP request latency by route template",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
EVENTS_INGESTED = Counter("recsys_events_ingested_total", "Events received by POST /events", ["result"])
MODEL_SWAPS = Counter("recsys_model_swaps_total", "Model versions swapped in", ["alias"])
MODEL_RELOAD_FAILURES = Counter("recsys_model_reload_failures_total", "Model loads refused", ["alias"])
MODEL_INFO = Gauge(
    "recsys_model_version_info",
    "1 for the model version each alias is served from (0 once replaced)",
    ["alias", "version"],
    multiprocess_mode="liveall",
)
IMPRESSIONS = Counter(
    "recsys_impressions_total", "Served lists logged as impressions (logged, dropped: queue full, failed)", ["result"]
)
CATALOG_CHANGES = Counter("recsys_catalog_changes_applied_total", "Catalog changes applied to loaded models")


def set_model_info(alias: str, old: str | None, new: str) -> None:
    if old is not None and old != new:
        MODEL_INFO.labels(alias=alias, version=old).set(0)
    MODEL_INFO.labels(alias=alias, version=new).set(1)


def render() -> tuple[bytes, str]:
    if MULTIPROCESS:
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: latency per route *template* (``/users/{user_id}/recommendations``).

    Every label value is bounded by the app, never by the client: the method is one of
    :data:`HTTP_METHODS` or "other", the route a template of this app or "unmatched", the
    status an HTTP status the app sent."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            REQUEST_LATENCY.labels(method, template, str(status["code"])).observe(time.perf_counter() - start)
