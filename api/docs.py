"""/docs (Swagger UI) and /redoc, served with the JavaScript and CSS the fastapi-offline
package ships: nothing is fetched from the internet, so the pages work offline.

The schema documents one error body (api/errors.py): the 422 FastAPI adds to every route with
inputs names the ``Error`` schema, not FastAPI's own ``HTTPValidationError``.

The pages carry a Content-Security-Policy that allows only this server (plus the inline script
FastAPI's page template starts the UI with, and the blob worker ReDoc searches in): ReDoc's
sidebar would otherwise try to load its logo from its CDN.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

#: where the Swagger UI and ReDoc files are served from
STATIC_URL = "/static-offline-docs"
STATIC_DIR = files("fastapi_offline") / "static"
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


def install(app: FastAPI) -> None:
    """Add /docs, /redoc and their static files to an app created with ``docs_url=None,
    redoc_url=None``."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _one_error_schema(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(STATIC_URL, StaticFiles(directory=str(STATIC_DIR)), name="static-offline-docs")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    def _page(html: HTMLResponse) -> HTMLResponse:
        html.headers["Content-Security-Policy"] = CSP
        return html

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_swagger_ui_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - Swagger UI",
                oauth2_redirect_url=f"{root}{oauth2_redirect_url}",
                swagger_js_url=f"{root}{STATIC_URL}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC_URL}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                # no badge fetched from the online validator
                swagger_ui_parameters={**(app.swagger_ui_parameters or {}), "validatorUrl": None},
            )
        )

    @app.get(oauth2_redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _page(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _page(
            get_redoc_html(
                openapi_url=f"{root}{openapi_url}",
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{STATIC_URL}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC_URL}/favicon.png",
                with_google_fonts=False,
            )
        )


_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_ERROR = "#/components/schemas/Error"


def _one_error_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Every 422 FastAPI documents with its own ``HTTPValidationError`` names ``Error`` instead
    (the body the app answers, api/errors.py); FastAPI's schemas then go."""
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            response = op.get("responses", {}).get("422")
            json_schema = (response or {}).get("content", {}).get("application/json", {}).get("schema", {})
            if json_schema.get("$ref") == _FASTAPI_422:
                response["description"] = "invalid input: the body names the field"
                json_schema["$ref"] = _ERROR
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
