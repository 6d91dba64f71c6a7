from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.generate_request import GenerateRequest
from ...models.job_response import JobResponse
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    body: GenerateRequest,
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
        "url": "/v1/generate",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | JobResponse | None:
    if response.status_code == 200:
        response_200 = JobResponse.from_dict(response.json())

        return response_200

    if response.status_code == 202:
        response_202 = JobResponse.from_dict(response.json())

        return response_202

    if response.status_code == 401:
        response_401 = ErrorResponse.from_dict(response.json())

        return response_401

    if response.status_code == 413:
        response_413 = ErrorResponse.from_dict(response.json())

        return response_413

    if response.status_code == 422:
        response_422 = ErrorResponse.from_dict(response.json())

        return response_422

    if response.status_code == 429:
        response_429 = ErrorResponse.from_dict(response.json())

        return response_429

    if response.status_code == 503:
        response_503 = ErrorResponse.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[ErrorResponse | JobResponse]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: GenerateRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[ErrorResponse | JobResponse]:
    """Queue an image generation job

     Validate a prompt job against its model's limits and queue it for that model.

    Fields left out take the model's defaults; the job's `params` report what it runs with,
    the seed included. The answer is 202 with the job and its `Location`; with `Prefer: wait=N`
    the request is held up to N seconds and answers 200 with the finished job if it ends in
    time (a failed generation is a job state, not an HTTP error).

    Args:
        prefer (None | str | Unset): RFC 7240 preference `wait=N` (0..60): hold the response up to
            N seconds and answer 200 with the finished job if it ends in time.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (GenerateRequest): The body of POST /v1/generate. Fields left out take the served
            model's defaults.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | JobResponse]
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
    body: GenerateRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> ErrorResponse | JobResponse | None:
    """Queue an image generation job

     Validate a prompt job against its model's limits and queue it for that model.

    Fields left out take the model's defaults; the job's `params` report what it runs with,
    the seed included. The answer is 202 with the job and its `Location`; with `Prefer: wait=N`
    the request is held up to N seconds and answers 200 with the finished job if it ends in
    time (a failed generation is a job state, not an HTTP error).

    Args:
        prefer (None | str | Unset): RFC 7240 preference `wait=N` (0..60): hold the response up to
            N seconds and answer 200 with the finished job if it ends in time.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (GenerateRequest): The body of POST /v1/generate. Fields left out take the served
            model's defaults.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | JobResponse
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
    body: GenerateRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> Response[ErrorResponse | JobResponse]:
    """Queue an image generation job

     Validate a prompt job against its model's limits and queue it for that model.

    Fields left out take the model's defaults; the job's `params` report what it runs with,
    the seed included. The answer is 202 with the job and its `Location`; with `Prefer: wait=N`
    the request is held up to N seconds and answers 200 with the finished job if it ends in
    time (a failed generation is a job state, not an HTTP error).

    Args:
        prefer (None | str | Unset): RFC 7240 preference `wait=N` (0..60): hold the response up to
            N seconds and answer 200 with the finished job if it ends in time.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (GenerateRequest): The body of POST /v1/generate. Fields left out take the served
            model's defaults.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | JobResponse]
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
    body: GenerateRequest,
    prefer: None | str | Unset = UNSET,
    idempotency_key: None | str | Unset = UNSET,
) -> ErrorResponse | JobResponse | None:
    """Queue an image generation job

     Validate a prompt job against its model's limits and queue it for that model.

    Fields left out take the model's defaults; the job's `params` report what it runs with,
    the seed included. The answer is 202 with the job and its `Location`; with `Prefer: wait=N`
    the request is held up to N seconds and answers 200 with the finished job if it ends in
    time (a failed generation is a job state, not an HTTP error).

    Args:
        prefer (None | str | Unset): RFC 7240 preference `wait=N` (0..60): hold the response up to
            N seconds and answer 200 with the finished job if it ends in time.
        idempotency_key (None | str | Unset): Any unique string of 1..255 printable ASCII
            characters (a UUID, say). Retrying with the same key and body within 24 h returns the job
            the first request created instead of a second one; the same key with another body is
            refused (422, `idempotency_key_reused`). Keys are scoped per API key.
        body (GenerateRequest): The body of POST /v1/generate. Fields left out take the served
            model's defaults.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | JobResponse
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            prefer=prefer,
            idempotency_key=idempotency_key,
        )
    ).parsed
