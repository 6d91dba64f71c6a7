from http import HTTPStatus
from io import BytesIO
from typing import Any
from urllib.parse import quote

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.error_response import ErrorResponse
from ...types import File, Response


def _get_kwargs(
    job_id: str,
    index: int,
) -> dict[str, Any]:

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/v1/jobs/{job_id}/images/{index}".format(
            job_id=quote(str(job_id), safe=""),
            index=quote(str(index), safe=""),
        ),
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> ErrorResponse | File | None:
    if response.status_code == 200:
        response_200 = File(payload=BytesIO(response.content))

        return response_200

    if response.status_code == 401:
        response_401 = ErrorResponse.from_dict(response.json())

        return response_401

    if response.status_code == 404:
        response_404 = ErrorResponse.from_dict(response.json())

        return response_404

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
) -> Response[ErrorResponse | File]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    job_id: str,
    index: int,
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | File]:
    """A stored image's bytes

     The bytes of a succeeded job's image `index` (0-based), with its content type: PNG (its
    parameters in a `parameters` text chunk), JPEG or WebP. With presigned result URLs the
    job's `links.images` point into the object store instead.

    Args:
        job_id (str):
        index (int): Image index, 0-based.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | File]
    """

    kwargs = _get_kwargs(
        job_id=job_id,
        index=index,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    job_id: str,
    index: int,
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | File | None:
    """A stored image's bytes

     The bytes of a succeeded job's image `index` (0-based), with its content type: PNG (its
    parameters in a `parameters` text chunk), JPEG or WebP. With presigned result URLs the
    job's `links.images` point into the object store instead.

    Args:
        job_id (str):
        index (int): Image index, 0-based.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | File
    """

    return sync_detailed(
        job_id=job_id,
        index=index,
        client=client,
    ).parsed


async def asyncio_detailed(
    job_id: str,
    index: int,
    *,
    client: AuthenticatedClient,
) -> Response[ErrorResponse | File]:
    """A stored image's bytes

     The bytes of a succeeded job's image `index` (0-based), with its content type: PNG (its
    parameters in a `parameters` text chunk), JPEG or WebP. With presigned result URLs the
    job's `links.images` point into the object store instead.

    Args:
        job_id (str):
        index (int): Image index, 0-based.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[ErrorResponse | File]
    """

    kwargs = _get_kwargs(
        job_id=job_id,
        index=index,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    job_id: str,
    index: int,
    *,
    client: AuthenticatedClient,
) -> ErrorResponse | File | None:
    """A stored image's bytes

     The bytes of a succeeded job's image `index` (0-based), with its content type: PNG (its
    parameters in a `parameters` text chunk), JPEG or WebP. With presigned result URLs the
    job's `links.images` point into the object store instead.

    Args:
        job_id (str):
        index (int): Image index, 0-based.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        ErrorResponse | File
    """

    return (
        await asyncio_detailed(
            job_id=job_id,
            index=index,
            client=client,
        )
    ).parsed
