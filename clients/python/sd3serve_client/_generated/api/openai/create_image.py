from http import HTTPStatus
from typing import Any

import httpx

from ...client import AuthenticatedClient, Client
from ...models.image_generation_request import ImageGenerationRequest
from ...models.images_response import ImagesResponse
from ...models.open_ai_error_response import OpenAIErrorResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    body: ImageGenerationRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(prefer, Unset):
        headers["prefer"] = prefer

    if not isinstance(idempotency_key, Unset):
        headers["idempotency-key"] = idempotency_key

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/v1/images/generations",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ImagesResponse | OpenAIErrorResponse:
    if response.status_code == 200:
        response_200 = ImagesResponse.from_dict(response.json())

        return response_200

    if response.status_code == 400:
        response_400 = OpenAIErrorResponse.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = OpenAIErrorResponse.from_dict(response.json())

        return response_401

    if response.status_code == 409:
        response_409 = OpenAIErrorResponse.from_dict(response.json())

        return response_409

    if response.status_code == 413:
        response_413 = OpenAIErrorResponse.from_dict(response.json())

        return response_413

    if response.status_code == 429:
        response_429 = OpenAIErrorResponse.from_dict(response.json())

        return response_429

    if response.status_code == 500:
        response_500 = OpenAIErrorResponse.from_dict(response.json())

        return response_500

    if response.status_code == 503:
        response_503 = OpenAIErrorResponse.from_dict(response.json())

        return response_503

    if response.status_code == 504:
        response_504 = OpenAIErrorResponse.from_dict(response.json())

        return response_504

    response_default = OpenAIErrorResponse.from_dict(response.json())

    return response_default


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ImagesResponse | OpenAIErrorResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: ImageGenerationRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[ImagesResponse | OpenAIErrorResponse]:
    """OpenAI's image generation: a job, answered with its images once it ends

     Generate images from OpenAI's Images API body (the official SDK's `images.generate`).

    Each request is an ordinary job on the model's queue, visible under `/v1/jobs/{id}` (its
    id is in `x-sd3serve-job-id` and `job_id`); the answer waits for it to end. Our own
    parameters (`negative_prompt`, `seed`, `steps`, `guidance_scale`) ride in `extra_body`.
    Errors on this route have OpenAI's shape: `{"error": {"message", "type", "param",
    "code"}}`, with 400 for invalid input.

    Args:
        prefer (None | str | Unset): RFC 7240 `wait=N` (0..300): wait at most N seconds for the
            job (default 300), then answer 504 naming it.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (ImageGenerationRequest): OpenAI's image generation body, plus this service's own
            fields (the SDK's `extra_body`).

            Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
            `images.generate()` commonly sends is known, and those this service cannot honour are
            either accepted and ignored (documented on each) or refused where ignoring would lie.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ImagesResponse | OpenAIErrorResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        prefer=prefer,
        idempotency_key=idempotency_key,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: ImageGenerationRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> ImagesResponse | OpenAIErrorResponse | None:
    """OpenAI's image generation: a job, answered with its images once it ends

     Generate images from OpenAI's Images API body (the official SDK's `images.generate`).

    Each request is an ordinary job on the model's queue, visible under `/v1/jobs/{id}` (its
    id is in `x-sd3serve-job-id` and `job_id`); the answer waits for it to end. Our own
    parameters (`negative_prompt`, `seed`, `steps`, `guidance_scale`) ride in `extra_body`.
    Errors on this route have OpenAI's shape: `{"error": {"message", "type", "param",
    "code"}}`, with 400 for invalid input.

    Args:
        prefer (None | str | Unset): RFC 7240 `wait=N` (0..300): wait at most N seconds for the
            job (default 300), then answer 504 naming it.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (ImageGenerationRequest): OpenAI's image generation body, plus this service's own
            fields (the SDK's `extra_body`).

            Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
            `images.generate()` commonly sends is known, and those this service cannot honour are
            either accepted and ignored (documented on each) or refused where ignoring would lie.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ImagesResponse | OpenAIErrorResponse
    """

    return sync_detailed(
        client=client,
        body=body,
        prefer=prefer,
        idempotency_key=idempotency_key,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: ImageGenerationRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[ImagesResponse | OpenAIErrorResponse]:
    """OpenAI's image generation: a job, answered with its images once it ends

     Generate images from OpenAI's Images API body (the official SDK's `images.generate`).

    Each request is an ordinary job on the model's queue, visible under `/v1/jobs/{id}` (its
    id is in `x-sd3serve-job-id` and `job_id`); the answer waits for it to end. Our own
    parameters (`negative_prompt`, `seed`, `steps`, `guidance_scale`) ride in `extra_body`.
    Errors on this route have OpenAI's shape: `{"error": {"message", "type", "param",
    "code"}}`, with 400 for invalid input.

    Args:
        prefer (None | str | Unset): RFC 7240 `wait=N` (0..300): wait at most N seconds for the
            job (default 300), then answer 504 naming it.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (ImageGenerationRequest): OpenAI's image generation body, plus this service's own
            fields (the SDK's `extra_body`).

            Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
            `images.generate()` commonly sends is known, and those this service cannot honour are
            either accepted and ignored (documented on each) or refused where ignoring would lie.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ImagesResponse | OpenAIErrorResponse]
    """

    kwargs = _get_kwargs(
        body=body,
        prefer=prefer,
        idempotency_key=idempotency_key,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: ImageGenerationRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> ImagesResponse | OpenAIErrorResponse | None:
    """OpenAI's image generation: a job, answered with its images once it ends

     Generate images from OpenAI's Images API body (the official SDK's `images.generate`).

    Each request is an ordinary job on the model's queue, visible under `/v1/jobs/{id}` (its
    id is in `x-sd3serve-job-id` and `job_id`); the answer waits for it to end. Our own
    parameters (`negative_prompt`, `seed`, `steps`, `guidance_scale`) ride in `extra_body`.
    Errors on this route have OpenAI's shape: `{"error": {"message", "type", "param",
    "code"}}`, with 400 for invalid input.

    Args:
        prefer (None | str | Unset): RFC 7240 `wait=N` (0..300): wait at most N seconds for the
            job (default 300), then answer 504 naming it.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (ImageGenerationRequest): OpenAI's image generation body, plus this service's own
            fields (the SDK's `extra_body`).

            Unknown fields are refused, as on /v1/generate; every field the `openai` SDK's
            `images.generate()` commonly sends is known, and those this service cannot honour are
            either accepted and ignored (documented on each) or refused where ignoring would lie.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ImagesResponse | OpenAIErrorResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            prefer=prefer,
            idempotency_key=idempotency_key,
        )
    ).parsed
