"""Swagger UI and ReDoc served with their bundles from this process (no CDN)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC_PATH = "/docs/static"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_JS_PATH = "/docs/redoc.standalone.js"
# ReDoc's menu footer always shows Redocly's logo, fetched from their CDN (no
# option turns it off): the served bundle shows our own favicon instead, so the
# page requests nothing from another host (the CSP would block it anyway).
_REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
_LOCAL_LOGO = f"{DOCS_STATIC_PATH}/favicon.png"


def _bundle_directory() -> Path:
    # fastapi-offline ships pinned Swagger UI / ReDoc bundles; we only use its files.
    return Path(str(files("fastapi_offline") / "static"))


@cache
def redoc_bundle() -> bytes:
    """ReDoc's standalone bundle, with its one run-time request to a CDN made local.

    Returns:
        The JavaScript, read once per process.
    """
    bundle = (_bundle_directory() / "redoc.standalone.js").read_bytes()
    return bundle.replace(_REDOC_LOGO.encode(), _LOCAL_LOGO.encode())


def install_docs(app: FastAPI, *, openapi_url: str, title: str) -> None:
    """Add `/docs`, `/redoc` and their static files to `app`.

    Args:
        app: The application (created with docs_url=None, redoc_url=None).
        openapi_url: Where the OpenAPI document is served.
        title: Page title.
    """
    app.mount(
        DOCS_STATIC_PATH, StaticFiles(directory=_bundle_directory()), name="docs-static"
    )

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            swagger_js_url=f"{DOCS_STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC_PATH}/favicon.png",
            init_oauth={"usePkceWithAuthorizationCodeGrant": True},
            # No validator: its badge is an image from validator.swagger.io.
            swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_JS_PATH, include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(
            redoc_bundle(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=REDOC_JS_PATH,
            redoc_favicon_url=f"{DOCS_STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        )
