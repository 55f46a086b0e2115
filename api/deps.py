"""Dependencies injected into routes.

They are ``async def`` on purpose: each is a few attribute reads, and FastAPI runs a plain
``def`` dependency in its thread pool — two dozen thread hops per request cost more than the
recommendation itself (bench/serve_bench.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request, Security
from fastapi.security import APIKeyHeader

from api.errors import ApiError
from api.keys import NO_KEYS_HINT, KeyChecker
from api.serving import (
    LoadedModel,
    LoaderBusy,
    ModelHolder,
    ReloadError,
    UnknownVersion,
)
from feature_store import FeatureStore
from recsys.settings import Settings

api_key_header = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (writes, /admin/*, and reads when configured)"
)


async def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


async def get_holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def get_store(request: Request) -> FeatureStore:
    return request.app.state.store


async def get_keys(request: Request) -> KeyChecker:
    return request.app.state.keys


async def get_model(holder: Annotated[ModelHolder, Depends(get_holder)]) -> LoadedModel:
    return holder.current


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]
StoreDep = Annotated[FeatureStore, Depends(get_store)]
ModelDep = Annotated[LoadedModel, Depends(get_model)]


def _check_key(key: str | None, keys: KeyChecker) -> None:
    if not key:
        if not keys.any_configured():
            raise ApiError(
                401,
                "X-API-Key",
                f"this server has no API key configured, so no request that needs one can succeed: {NO_KEYS_HINT}",
                location="header",
                headers={"WWW-Authenticate": "APIKey"},
            )
        raise ApiError(
            401,
            "X-API-Key",
            "an API key is required (header X-API-Key)",
            location="header",
            headers={"WWW-Authenticate": "APIKey"},
        )
    if not keys.valid(key):
        raise ApiError(403, "X-API-Key", "the API key is not valid", location="header")


async def require_key(
    key: Annotated[str | None, Security(api_key_header)], keys: Annotated[KeyChecker, Depends(get_keys)]
) -> None:
    """Writes and /admin/*: 401 without a key, 403 with a wrong one."""
    _check_key(key, keys)


async def read_key(request: Request, key: Annotated[str | None, Security(api_key_header)]) -> None:
    """Reads: open unless ``RECSYS_READS_REQUIRE_KEY`` is set."""
    check_read_key(request, key)


def check_read_key(request: Request, key: str | None) -> None:
    """:func:`read_key` for a route that reads its inputs itself (api/routes/recommendations.py)."""
    if request.app.state.settings.reads_require_key:
        _check_key(key, request.app.state.keys)


#: a registry version as a request may pin it (``?model_version=`` / ``X-Model-Version``)
VERSION_CONSTRAINTS = {"min_length": 1, "max_length": 64, "pattern": r"^[0-9]+$"}


async def pinned_model(
    request: Request,
    holder: Annotated[ModelHolder, Depends(get_holder)],
    key: Annotated[str | None, Security(api_key_header)],
    model_version: Annotated[
        str | None,
        Query(
            **VERSION_CONSTRAINTS,
            description="serve this registry version instead of the alias "
            "(a version this worker has not loaded needs an API key)",
        ),
    ] = None,
    x_model_version: Annotated[str | None, Header(**VERSION_CONSTRAINTS, description="same as ?model_version=")] = None,
) -> LoadedModel | None:
    """The pinned version's model, or None when the request pins nothing.

    A version already loaded (served or cached) is open to every reader. Loading another one
    reads the registry and a bundle, so it needs an API key (401/403 as for writes) and runs
    in the holder's loader thread, one at a time per process: the event loop never blocks on
    it, and a request for a second version while one loads gets 503 with Retry-After.
    """
    return await pin(request, holder, key, model_version or x_model_version)


async def pin(request: Request, holder: ModelHolder, key: str | None, version: str | None) -> LoadedModel | None:
    """:func:`pinned_model` once the version is read and validated (None: nothing pinned)."""
    if version is None:
        return None
    version = str(int(version))  # "01" and "001" are version 1: one cache entry, one answer
    model = holder.loaded_version(version)
    if model is not None:
        return model
    _check_key(key, request.app.state.keys)
    try:
        return await holder.load_pinned(version)
    except UnknownVersion:
        raise ApiError(404, "model_version", f"no model version {version}")
    except LoaderBusy as exc:
        raise ApiError(503, "model_version", str(exc), headers={"Retry-After": "2"})
    except ReloadError as exc:
        raise ApiError(503, "model_version", exc.reason)


PinDep = Annotated[LoadedModel | None, Depends(pinned_model)]


def resolve(holder: ModelHolder, user_id: str | None, pinned: LoadedModel | None) -> tuple[LoadedModel, str]:
    """Model + variant for a request (``pinned`` from :func:`pinned_model`); no loading and no
    I/O here (the catalog is kept current by the holder's sync thread, api/serving.py)."""
    return holder.for_user(user_id, pinned)
