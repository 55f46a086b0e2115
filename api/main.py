"""FastAPI application: `uvicorn api.main:app` or `recsys serve`."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.routes import health, recommendations
from api.serving import ModelHolder, ModelNotReady
from feature_store import FeatureStore
from recsys.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store = FeatureStore(settings.database_url)
        holder = ModelHolder(settings, store)
        try:
            holder.load_alias()
        except Exception:  # the server still starts and reports not-ready
            logger.exception("could not load the model behind alias %s", settings.model_alias)
        app.state.settings, app.state.store, app.state.holder = settings, store, holder
        yield

    app = FastAPI(title="recsys", version="0.1.0", lifespan=lifespan,
                  description="Embedding-based recommendations: collaborative, content and hybrid.")

    @app.exception_handler(ModelNotReady)
    async def _not_ready(request: Request, exc: ModelNotReady) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    app.include_router(health.router)
    app.include_router(recommendations.router)
    return app


app = create_app()
