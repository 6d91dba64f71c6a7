"""Contains all the data models used in inputs/outputs"""

from .error_body import ErrorBody
from .error_response import ErrorResponse
from .field_error import FieldError
from .generate_params import GenerateParams
from .generate_request import GenerateRequest
from .health_response import HealthResponse
from .image_data import ImageData
from .image_generation_request import ImageGenerationRequest
from .image_generation_request_background_type_0 import ImageGenerationRequestBackgroundType0
from .image_generation_request_moderation_type_0 import ImageGenerationRequestModerationType0
from .image_generation_request_quality_type_0 import ImageGenerationRequestQualityType0
from .image_generation_request_response_format_type_0 import (
    ImageGenerationRequestResponseFormatType0,
)
from .image_generation_request_style_type_0 import ImageGenerationRequestStyleType0
from .images_response import ImagesResponse
from .images_response_quality_type_0 import ImagesResponseQualityType0
from .job_links import JobLinks
from .job_response import JobResponse
from .job_status import JobStatus
from .job_webhook import JobWebhook
from .model_card import ModelCard
from .model_list import ModelList
from .open_ai_error_body import OpenAIErrorBody
from .open_ai_error_response import OpenAIErrorResponse
from .output_format import OutputFormat
from .progress import Progress
from .ready_response import ReadyResponse
from .timings import Timings
from .webhook_request import WebhookRequest
from .webhook_request_events_item import WebhookRequestEventsItem
from .webhook_state import WebhookState

__all__ = (
    "ErrorBody",
    "ErrorResponse",
    "FieldError",
    "GenerateParams",
    "GenerateRequest",
    "HealthResponse",
    "ImageData",
    "ImageGenerationRequest",
    "ImageGenerationRequestBackgroundType0",
    "ImageGenerationRequestModerationType0",
    "ImageGenerationRequestQualityType0",
    "ImageGenerationRequestResponseFormatType0",
    "ImageGenerationRequestStyleType0",
    "ImagesResponse",
    "ImagesResponseQualityType0",
    "JobLinks",
    "JobResponse",
    "JobStatus",
    "JobWebhook",
    "ModelCard",
    "ModelList",
    "OpenAIErrorBody",
    "OpenAIErrorResponse",
    "OutputFormat",
    "Progress",
    "ReadyResponse",
    "Timings",
    "WebhookRequest",
    "WebhookRequestEventsItem",
    "WebhookState",
)
