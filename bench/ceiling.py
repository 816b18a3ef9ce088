"""The ceiling: a bare FastAPI app whose one route only decodes the service's JWT.

Started exactly like the service (one uvicorn worker, uvloop, httptools):

    uvicorn bench.ceiling:create_app --factory --workers 1 --loop uvloop --http httptools

It reads the signing key, algorithm, issuer and audience from the same
environment as the service, so a token the service issued decodes here. What
the service adds on top of this (database, validation, envelope, middleware,
access log) is what the ratio to this route measures.
"""

from __future__ import annotations

from typing import Annotated, Any

import jwt
from fastapi import FastAPI, Header, HTTPException

from app.core.config import get_settings


def create_app() -> FastAPI:
    """The ceiling application: `GET /ceiling` (JWT decode) and `GET /health`."""
    settings = get_settings()
    key = settings.SECRET_KEY.get_secret_value()
    algorithms = [settings.JWT_ALGORITHM]
    audience = settings.JWT_AUDIENCE
    issuer = settings.JWT_ISSUER
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/ceiling")
    async def ceiling(authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HTTPException(status_code=401, detail="Not authenticated")
        try:
            claims = jwt.decode(
                token, key, algorithms=algorithms, audience=audience, issuer=issuer
            )
        except jwt.PyJWTError as exc:
            raise HTTPException(status_code=401, detail="Invalid token") from exc
        return {"user_id": claims["sub"], "scope": claims.get("scope", "")}

    return app
