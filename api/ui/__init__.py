"""The operator dashboard: server-rendered pages under ``/ui`` in the API's own process.

Overview (``/ui``), user explorer (``/ui/users/{id}``), item explorer (``/ui/items/{id}``),
models and their cards (``/ui/models``, ``/ui/models/{version}``), experiment reports
(``/ui/experiments/{run_id}``) and the A/B results (``/ui/ab``). Jinja2 templates, plots as
inline SVG drawn by matplotlib on the server, one small stylesheet and script served from this
package: nothing from the internet, no front-end build. Reads follow the API's key rules
(api/ui/access.py); the pages never write.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from api.ui.access import KeyRequired, UiAccess
from api.ui.pages import RegistryCache, UiNotFound, not_found_response, router
from api.ui.render import STATIC_DIR, page

__all__ = ["install"]


def install(app: FastAPI) -> None:
    """Add the dashboard's routes, its static files and its error pages to the app."""
    app.state.ui_registry = RegistryCache()
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")

    @app.exception_handler(KeyRequired)
    async def _key_required(request: Request, exc: KeyRequired) -> HTMLResponse:
        body = page(
            "key.html",
            status=exc.status_code,
            message=exc.message,
            next=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            request_path=request.url.path,
            access=UiAccess(None),
            reads_require_key=True,
            served={},
        )
        headers = {"Cache-Control": "no-store"}
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "APIKey"
        return HTMLResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(UiNotFound)
    async def _not_found(request: Request, exc: UiNotFound) -> HTMLResponse:
        return not_found_response(request, None, str(exc))
