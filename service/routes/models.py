from __future__ import annotations

from fastapi import APIRouter, Request

from service.openapi import error
from service.routes.deps import service_of
from service.schemas import ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelList,
    response_description="The known models (an empty list before any worker has started).",
    summary="The known models, with their limits, defaults, warm workers and queue depth",
)
async def list_models(request: Request) -> ModelList:
    """Every model a worker has published, in OpenAI's list shape: each with its size limits
    (`size_multiple`, `min_size`, `max_size`), defaults, pipeline, dtype, device, text encoders,
    warm workers (`workers_ready`) and queued jobs (`queue_depth`). A model stays listed while
    its pool is scaled to zero; its jobs queue for a worker."""
    return ModelList(data=await service_of(request).list_models())


@router.get(
    "/models/{model_id}",
    response_model=ModelCard,
    response_description="The model.",
    responses={
        404: error(
            "No such model.",
            "model_not_found",
            "no model 'sd3-large'; GET /v1/models lists the known ones",
        )
    },
    summary="One model",
)
async def get_model(model_id: str, request: Request) -> ModelCard:
    """One model by its `id`, as in `GET /v1/models`: what `model` names in a request."""
    return await service_of(request).get_model(model_id)
