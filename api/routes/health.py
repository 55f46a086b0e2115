from fastapi import APIRouter

from api.deps import HolderDep
from api.schemas import Health

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health)
def health(holder: HolderDep) -> Health:
    """Liveness: the process answers. Names the served model version when one is loaded."""
    return Health(status="ok", model_version=holder.current.version if holder.ready else None)
