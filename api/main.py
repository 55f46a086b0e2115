"""FastAPI application: `uvicorn api.main:app` or `recsys serve`."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path

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
from api.ui import install as install_dashboard
from feature_store import FeatureStore
from recsys.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def _no_delay_on_listening_sockets() -> int:
    """Set TCP_NODELAY on this process's server TCP sockets; returns how many.

    With ``--workers N`` uvicorn binds the socket itself as ``socket.socket(family)``, whose
    ``proto`` is 0, so asyncio's transports skip TCP_NODELAY on the accepted connections: a
    response's body write then waits for the client's delayed ACK of the headers (~40 ms per
    request; bench/serve_bench.py measured 350 req/s for /health with 2 workers). On Linux an
    accepted socket inherits the option from the listening one. (One worker: uvicorn binds after
    the lifespan starts, through asyncio, which sets the option itself.)
    """
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return 0
    done = 0
    for entry in fd_dir.iterdir():
        try:
            if not os.readlink(entry).startswith("socket:"):
                continue
            sock = socket.socket(fileno=int(entry.name))
        except (OSError, ValueError):
            continue
        try:
            # bound and not connected: the server socket (listen() may not have run yet: asyncio
            # calls it when the first worker starts serving)
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[1] != 0
                and not _connected(sock)
            ):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                done += 1
        except OSError:
            pass
        finally:
            sock.detach()  # the fd stays open: it is uvicorn's
    return done


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:
        return False
    return True


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        _no_delay_on_listening_sockets()
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

    app = FastAPI(
        title="recsys",
        version="0.2.0",
        lifespan=lifespan,
        description="Embedding-based recommendations: collaborative, content and hybrid.",
        responses={
            # Answered by the HTTP server (uvicorn/h11) before the app sees the request, e.g. a
            # request line or headers past its 16 KB limit: documented so clients expect it.
            400: {
                "description": "malformed HTTP request (plain text from the HTTP server)",
                "content": {"text/plain": {}},
            },
            413: {"model": Error, "description": "request body over RECSYS_MAX_BODY_BYTES"},
        },
    )

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
            return JSONResponse(
                status_code=422,
                content={"detail": [{"loc": ["body"], "msg": "the body is not valid JSON", "type": "json_invalid"}]},
            )
        return await http_exception_handler(request, exc)

    # Outermost last: metrics also count the 413s of the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    app.include_router(recommendations.hot_router)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(catalog.router)
    app.include_router(admin.router)
    install_dashboard(app)  # the operator dashboard under /ui (api/ui)
    return app


app = create_app()
