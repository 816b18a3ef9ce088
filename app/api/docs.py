"""Swagger UI and ReDoc served with their bundles from this process (no CDN)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC_PATH = "/docs/static"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"


def _bundle_directory() -> Path:
    # fastapi-offline ships pinned Swagger UI / ReDoc bundles; we only use its files.
    return Path(str(files("fastapi_offline") / "static"))


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
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{DOCS_STATIC_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_STATIC_PATH}/favicon.png",
            with_google_fonts=False,
        )
