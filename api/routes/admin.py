"""/admin/*: model lifecycle (API key required)."""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from api.deps import HolderDep, require_key
from api.errors import ApiError
from api.schemas import Error, LoadedModels, Reloaded
from api.serving import ReloadError

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_key)])


@router.post(
    "/reload",
    response_model=Reloaded,
    responses={
        401: {"model": Error},
        403: {"model": Error},
        404: {"model": Error, "description": "the registered model has no such alias"},
        409: {"model": Error, "description": "the new version was refused; the old one keeps serving"},
    },
)
def reload(
    holder: HolderDep,
    alias: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=255,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="one alias (default: every served alias)",
        ),
    ] = None,
):
    """Load the versions behind the served aliases now and swap them in once verified.

    Answers once this worker swapped; it then bumps the shared reload generation, so every
    other worker (and replica on the same database) follows within about a second.
    """
    try:
        results = holder.reload(alias)
    except ReloadError as exc:
        served = ", ".join(f"{a} v{v}" for a, v in sorted(holder.served().items())) or "nothing"
        raise ApiError(
            409,
            "alias",
            f"version {exc.version} behind alias {exc.alias!r} was refused: {exc.reason} (serving {served})",
        )
    if alias is not None and results[alias]["version"] is None:
        raise ApiError(404, "alias", f"model {holder.settings.registered_model_name!r} has no alias {alias!r}")
    holder.announce_reload(f"admin/reload pid {os.getpid()}")
    return Reloaded(results=results, served=holder.served())


@router.get("/models", response_model=LoadedModels, responses={401: {"model": Error}, 403: {"model": Error}})
def models(holder: HolderDep) -> LoadedModels:
    """Which versions this worker serves and caches."""
    return LoadedModels(served=holder.served(), cached_versions=holder.cached_versions(), split=holder.split)
