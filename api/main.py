"""FastAPI application: `uvicorn api.main:app` or `recsys serve`."""

from __future__ import annotations

import logging
import os
import socket
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.docs import install as install_docs
from api.errors import ApiError, Error, FieldError, error_detail, error_response, validation_detail
from api.keys import NO_KEYS_HINT, KeyChecker
from api.metrics import MetricsMiddleware
from api.request_guards import BodySizeLimit, validation_error_response
from api.routes import admin, catalog, events, health, recommendations
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


API_DESCRIPTION = """Embedding-based recommendations: collaborative, content and hybrid.

**Errors.** Every error answer (4xx and 5xx) has one JSON body, `Error`:
`{"detail": {"field": ..., "message": ..., "errors": [{"field", "location", "message", "type", "input"}]}}`.
`field` names the input at fault (a parameter, a header such as `X-API-Key`, or a body field as a
dotted path with `[i]` for list positions; `null` when no one input is), `message` says what is
wrong, and `errors` lists every problem found (invalid input: up to 20, each with a short preview
of a scalar value).

**Keys.** Writes and `/admin/*` need an `X-API-Key` header (reads too when the server is set up
so). A server started without any key refuses every write with 401 until keys are configured
(`RECSYS_API_KEYS`, or `python -m api.keys create NAME`).
"""


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
        if not app.state.keys.any_configured():
            logger.warning(
                "no API key configured: every write (POST /events, /items, /users) and /admin/* is refused "
                "with 401. To accept writes, %s",
                NO_KEYS_HINT,
            )
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
        description=API_DESCRIPTION,
        docs_url=None,  # /docs and /redoc from local files: api/docs.py
        redoc_url=None,
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
        return error_response(503, ApiError(503, None, str(exc)).body())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # A body that isn't decodable JSON: answer like every other invalid input (422).
            problem = FieldError(
                field="body", location="body", message="the body is not valid JSON", type="json_invalid"
            )
            return error_response(422, validation_detail([problem]))
        return error_response(exc.status_code, error_detail(exc), exc.headers)

    # Outermost last: metrics also count the 413s of the body limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    app.include_router(health.router)
    app.include_router(recommendations.hot_router)
    app.include_router(recommendations.router)
    app.include_router(events.router)
    app.include_router(catalog.router)
    app.include_router(admin.router)
    install_docs(app)  # /docs and /redoc, offline (api/docs.py)
    install_dashboard(app)  # the operator dashboard under /ui (api/ui)
    return app


app = create_app()
