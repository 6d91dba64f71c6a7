from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from common.contract import ModelInfo
from service.routes.deps import get_service
from service.schemas import ErrorResponse
from service.service import GenerationService

router = APIRouter(prefix="/v1", tags=["models"])


@router.get(
    "/models",
    response_model=ModelInfo,
    responses={503: {"model": ErrorResponse, "description": "No worker has loaded a model yet."}},
    summary="The model the workers serve, with its limits and defaults",
)
async def get_model(service: Annotated[GenerationService, Depends(get_service)]) -> ModelInfo:
    return await service.model()
