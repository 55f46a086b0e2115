"""FastAPI application: `uvicorn api.main:app` or `recsys serve`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.keys import KeyChecker
from api.metrics import MetricsMiddleware
from api.request_guards import BodySizeLimit, validation_error_response
from api.routes import admin, catalog, events, health, recommendations
from api.schemas import Error
from api.serving import ModelHolder, ModelNotReady, ReloadError
from feature_store import FeatureStore
from recsys.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = FeatureStore(settings.database_url)
        holder = ModelHolder(settings, store)
        for alias in holder.aliases:
            try:
                holder.load_alias(alias)
            except ReloadError as exc:  # the server still starts and reports not-ready
                logger.error("could not load alias %s: %s", alias, exc.reason)
            except Exception:
                logger.exception("could not load the model behind alias %s", alias)
        app.state.settings, app.state.store, app.state.holder = settings, store, holder
        app.state.keys = KeyChecker(store, settings.api_key_list)
        holder.start_syncing()
        holder.start_watching()
        try:
            yield
        finally:
            holder.stop()
            store.dispose()

    app = FastAPI(title="recsys", version="0.2.0", lifespan=lifespan,
                  description="Embedding-based recommendations: collaborative, content and hybrid.",
                  responses={413: {"model": Error, "description": "request body over RECSYS_MAX_BODY_BYTES"}})

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": {"field": None, "message": str(exc)}})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # A body that isn't decodable JSON: answer like every other invalid input (422).
            return JSONResponse(status_code=422, content={"detail": [
                {"loc": ["body"], "msg": "the body is not valid JSON", "type": "json_invalid"}]})
        return await http_exception_handler(request, exc)

    # Outermost last: metrics also count the 413s of the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(catalog.router)
    app.include_router(admin.router)
    return app


app = create_app()
