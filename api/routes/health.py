import os

from fastapi import APIRouter, Response

from api import metrics
from api.deps import HolderDep
from api.errors import ApiError
from api.schemas import Error, Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
async def health(holder: HolderDep) -> Health:
    """Liveness: the process answers. Names the served model version when one is loaded."""
    return Health(
        status="ok",
        model_version=holder.current.version if holder.ready else None,
        variants=holder.served(),
        pid=os.getpid(),
    )


@router.get("/ready", response_model=Health, responses={503: {"model": Error, "description": "no model loaded yet"}})
async def ready(holder: HolderDep):
    """Readiness: 200 once a model is loaded, 503 before."""
    if not holder.ready:
        raise ApiError(503, None, "no model loaded yet")
    return Health(status="ready", model_version=holder.current.version, variants=holder.served(), pid=os.getpid())


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
def prometheus_metrics() -> Response:
    """Prometheus exposition (aggregated over workers in multiprocess mode)."""
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
