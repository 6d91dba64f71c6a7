from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...models.model_list import ModelList
from ...types import Response


def _get_kwargs() -> dict[str, Any]:

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/models",
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | ModelList | None:
    if response.status_code == 200:
        response_200 = ModelList.from_dict(response.json())

        return response_200

    if response.status_code == 401:
        response_401 = ErrorResponse.from_dict(response.json())

        return response_401

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
) -> Response[ErrorResponse | ModelList]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | ModelList]:
    """The known models, with their limits, defaults, warm workers and queue depth

     Every model a worker has published, in OpenAI's list shape: each with its size limits
    (`size_multiple`, `min_size`, `max_size`), defaults, pipeline, dtype, device, text encoders,
    warm workers (`workers_ready`) and queued jobs (`queue_depth`). A model stays listed while
    its pool is scaled to zero; its jobs queue for a worker.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | ModelList]
    """

    kwargs = _get_kwargs()

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | ModelList | None:
    """The known models, with their limits, defaults, warm workers and queue depth

     Every model a worker has published, in OpenAI's list shape: each with its size limits
    (`size_multiple`, `min_size`, `max_size`), defaults, pipeline, dtype, device, text encoders,
    warm workers (`workers_ready`) and queued jobs (`queue_depth`). A model stays listed while
    its pool is scaled to zero; its jobs queue for a worker.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | ModelList
    """

    return sync_detailed(
        client=client,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | ModelList]:
    """The known models, with their limits, defaults, warm workers and queue depth

     Every model a worker has published, in OpenAI's list shape: each with its size limits
    (`size_multiple`, `min_size`, `max_size`), defaults, pipeline, dtype, device, text encoders,
    warm workers (`workers_ready`) and queued jobs (`queue_depth`). A model stays listed while
    its pool is scaled to zero; its jobs queue for a worker.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | ModelList]
    """

    kwargs = _get_kwargs()

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | ModelList | None:
    """The known models, with their limits, defaults, warm workers and queue depth

     Every model a worker has published, in OpenAI's list shape: each with its size limits
    (`size_multiple`, `min_size`, `max_size`), defaults, pipeline, dtype, device, text encoders,
    warm workers (`workers_ready`) and queued jobs (`queue_depth`). A model stays listed while
    its pool is scaled to zero; its jobs queue for a worker.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | ModelList
    """

    return (
        await asyncio_detailed(
            client=client,
        )
    ).parsed
