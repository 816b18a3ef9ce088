"""The ceilings: bare FastAPI routes that do only what a measured route cannot avoid.

Started exactly like the service (one uvicorn worker, uvloop, httptools):

    uvicorn bench.ceiling:create_app --factory --workers 1 --loop uvloop --http httptools

It reads the signing key, algorithm, issuer and audience from the same
environment as the service, so a token the service issued decodes here. What
the service adds on top of this (database, validation, envelope, middleware,
access log) is what the ratio to this route measures.

`POST /login-floor` is the same for login: it reads the same form, verifies
the password against an argon2id hash with the service's own `PasswordHasher`
(same cost, same thread pool) and signs an access token, nothing more. Login
cannot go faster than this route; what login adds to it (its database read
and write, the middleware, the access log) is what the ratio to it measures.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import jwt
from fastapi import FastAPI, Form, Header, HTTPException

from app.core.config import get_settings
from app.core.security import PasswordHasher

FLOOR_PASSWORD = "Bench-Floor-Passw0rd"  # noqa: S105 - the floor route's throwaway password


def create_app() -> FastAPI:
    """The ceiling application: `GET /ceiling`, `POST /login-floor`, `GET /health`."""
    settings = get_settings()
    key = settings.SECRET_KEY.get_secret_value()
    algorithms = [settings.JWT_ALGORITHM]
    audience = settings.JWT_AUDIENCE
    issuer = settings.JWT_ISSUER
    hasher = PasswordHasher(settings)
    floor_hash = hasher.hash_sync(FLOOR_PASSWORD)
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

    @app.post("/login-floor")
    async def login_floor(
        username: Annotated[str, Form()], password: Annotated[str, Form()]
    ) -> dict[str, Any]:
        valid, _ = await hasher.verify_and_update(password, floor_hash)
        if not valid:
            raise HTTPException(status_code=401, detail="Incorrect login or password")
        now = int(time.time())
        claims = {"sub": username, "iat": now, "exp": now + 900}
        claims |= {"aud": audience, "iss": issuer}
        token = jwt.encode(claims, key, algorithm=algorithms[0])
        return {"access_token": token, "token_type": "bearer", "expires_in": 900}

    return app
