from __future__ import annotations

from fastapi import APIRouter

from service.routes.deps import Service
from service.schemas import ErrorResponse, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelList,
    summary="The known models, with their limits, defaults, warm workers and queue depth",
)
async def list_models(service: Service) -> ModelList:
    return ModelList(data=await service.list_models())


@router.get(
    "/models/{model_id}",
    response_model=ModelCard,
    responses={404: {"model": ErrorResponse, "description": "No such model."}},
    summary="One model",
)
async def get_model(model_id: str, service: Service) -> ModelCard:
    return await service.get_model(model_id)
