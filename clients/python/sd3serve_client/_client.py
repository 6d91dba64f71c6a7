"""`Client` and `AsyncClient`: the generated core, with retries, typed errors, waiting, events.

The generated operation modules build a request (`_get_kwargs`) and parse its response
(`_parse_response`); their `sync`/`asyncio` functions join the two around one plain send. This
layer does the sending itself, between those two halves: retries with one `Idempotency-Key`, a
streamed response for events, and errors raised rather than returned.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from importlib import metadata
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource

from sd3serve_client import _retry, errors
from sd3serve_client._generated import client as core
from sd3serve_client._generated.api.generate import generate as generate_op
from sd3serve_client._generated.api.jobs import cancel_job, get_image, get_job, stream_job_events
from sd3serve_client._generated.api.models import get_model, list_models
from sd3serve_client._generated.models.generate_request import GenerateRequest
from sd3serve_client._generated.models.job_response import JobResponse
from sd3serve_client._generated.models.model_card import ModelCard
from sd3serve_client._generated.models.model_list import ModelList
from sd3serve_client._generated.models.output_format import OutputFormat
from sd3serve_client._generated.types import File, Unset
from sd3serve_client.events import FINAL_STATUSES, Event, StatusEvent, parse

Job = JobResponse
Model = ModelCard

IDEMPOTENCY_KEY = "Idempotency-Key"
# The API sends a keep-alive comment every 15 s, so an idle event stream stays well inside this.
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 3
_SSE_HEADERS = {"Accept": "text/event-stream", "Cache-Control": "no-store"}

try:
    _USER_AGENT = f"sd3serve-client/{metadata.version('sd3serve-client')}"
except metadata.PackageNotFoundError:  # imported from a source tree, not installed
    _USER_AGENT = "sd3serve-client"

T = TypeVar("T")


class GenerateOptions(TypedDict, total=False):
    """The fields of `POST /v1/generate` besides the prompt; None (or absent) takes the default.

    `webhook` is a URL, or `{"url": ..., "events": [...]}` to choose the states reported.
    """

    model: str | None
    negative_prompt: str | None
    width: int | None
    height: int | None
    steps: int | None
    guidance_scale: float | None
    seed: int | None
    num_images: int | None
    output_format: OutputFormat | str | None
    webhook: str | Mapping[str, Any] | None


def check_base_url(url: str) -> str:
    """Refuse a base URL that is not http(s)://HOST[:PORT][/PREFIX], before any request."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 (raises ValueError on a port that is not a number in range)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"base_url must look like http://HOST:PORT; got {url!r}")
    return url


def _job_id(job: Job | str) -> str:
    return job if isinstance(job, str) else job.id


def _generate_kwargs(prompt: str, options: GenerateOptions) -> dict[str, Any]:
    given: dict[str, Any] = {"prompt": prompt}
    given.update((name, value) for name, value in options.items() if value is not None)
    if isinstance(given.get("webhook"), str):
        given["webhook"] = {"url": given["webhook"]}
    kwargs = generate_op._get_kwargs(body=GenerateRequest.from_dict(given))
    # A field newer than the spec this SDK was generated from is sent as given rather than
    # dropped by the generated model: the server accepts it or names it in a 422.
    kwargs["json"] = given | kwargs["json"]
    return kwargs


def _image_link(job: Job | str, index: int) -> str | None:
    """The image's URL when it is not the API's own route: a presigned object-store URL."""
    if isinstance(job, str) or isinstance(job.links.images, Unset):
        return None
    if not 0 <= index < len(job.links.images):
        return None
    link = job.links.images[index]
    route: str = get_image._get_kwargs(job_id=job.id, index=index)["url"]
    return None if httpx.URL(link).path.endswith(route) else link


def _expect(parsed: object, cls: type[T], response: httpx.Response) -> T:
    if isinstance(parsed, cls):
        return parsed
    request = response.request
    raise errors.ApiError(
        response.status_code,
        "unexpected_response",
        f"{request.method} {request.url} answered {response.status_code} without a {cls.__name__}",
        response=response,
    )


def _unreachable(exc: httpx.HTTPError, where: str) -> errors.APIConnectionError:
    reason = str(exc) or type(exc).__name__
    cls = (
        errors.APITimeoutError
        if isinstance(exc, httpx.TimeoutException)
        else errors.APIConnectionError
    )
    return cls(f"cannot reach {where}: {reason}")


def _transport_delay(exc: httpx.TransportError, attempt: int, max_retries: int) -> float | None:
    if isinstance(exc, httpx.UnsupportedProtocol):  # no retry makes an ftp:// link work
        return None
    return _retry.delay(attempt, max_retries)


def _status_failure(
    response: httpx.Response, attempt: int, max_retries: int
) -> tuple[errors.ApiError, float | None]:
    """The error a read error response stands for, and the wait before retrying it (or None)."""
    retry_after = _retry.parse_retry_after(response.headers.get("Retry-After"))
    error = errors.from_response(response, retry_after)
    return error, _retry.delay(attempt, max_retries, response.status_code, retry_after)


class _Base:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        httpx_args: Mapping[str, Any] | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.max_retries = max_retries
        headers = {"User-Agent": _USER_AGENT}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._core = core.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            httpx_args=dict(httpx_args or {}),
        )

    def _where(self, kwargs: Mapping[str, Any], external: bool) -> str:
        return str(kwargs["url"]) if external else f"the API at {self.base_url}"

    @staticmethod
    def _build(
        http: httpx.Client | httpx.AsyncClient,
        kwargs: Mapping[str, Any],
        headers: Mapping[str, str] | None,
        external: bool,
    ) -> httpx.Request:
        request = http.build_request(
            **{**kwargs, "headers": {**kwargs.get("headers", {}), **(headers or {})}}
        )
        if external:  # a presigned URL carries its own credentials and refuses a second kind
            request.headers.pop("Authorization", None)
        return request


class Client(_Base):
    """A blocking client of the sd3-serve API.

    `Client("http://127.0.0.1:8000")`; `api_key` is sent as `Authorization: Bearer KEY`;
    `max_retries` bounds the retries of one call on 429, 503 and lost connections; `httpx_args`
    go to `httpx.Client` (e.g. `event_hooks`, `transport`, `verify`).
    """

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._core.get_httpx_client().close()

    def generate(
        self,
        prompt: str,
        *,
        wait: bool = True,
        idempotency_key: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Job:
        """Queue a job; with `wait`, follow it to its final state and return it then.

        Every retry of this call carries one `Idempotency-Key` (`idempotency_key`, or a new
        UUID). A failed generation is a job state (`job.status`, `job.error`), not an exception.
        """
        key = idempotency_key or str(uuid.uuid4())
        response = self._send(_generate_kwargs(prompt, options), headers={IDEMPOTENCY_KEY: key})
        job = _expect(
            generate_op._parse_response(client=self._core, response=response), Job, response
        )
        if wait and job.status not in FINAL_STATUSES:
            return self.wait(job)
        return job

    def get(self, job: Job | str) -> Job:
        response = self._send(get_job._get_kwargs(job_id=_job_id(job)))
        return _expect(get_job._parse_response(client=self._core, response=response), Job, response)

    def wait(self, job: Job | str) -> Job:
        """Follow the job's events to its final state, then return the job."""
        for _ in self.events(job):
            pass
        return self.get(job)

    def cancel(self, job: Job | str) -> Job:
        """Cancel a job: at once while queued (`canceled`), at its next step while running."""
        response = self._send(cancel_job._get_kwargs(job_id=_job_id(job)))
        return _expect(
            cancel_job._parse_response(client=self._core, response=response), Job, response
        )

    def download(self, job: Job | str, index: int = 0) -> bytes:
        """The bytes of image `index` of a succeeded job, in its `output_format`."""
        link = _image_link(job, index)
        if link is not None:
            return self._send({"method": "GET", "url": link}, external=True).content
        response = self._send(get_image._get_kwargs(job_id=_job_id(job), index=index))
        parsed = get_image._parse_response(client=self._core, response=response)
        return _expect(parsed, File, response).payload.read()

    def models(self) -> list[Model]:
        response = self._send(list_models._get_kwargs())
        parsed = list_models._parse_response(client=self._core, response=response)
        return _expect(parsed, ModelList, response).data

    def model(self, model_id: str) -> Model:
        response = self._send(get_model._get_kwargs(model_id=model_id))
        parsed = get_model._parse_response(client=self._core, response=response)
        return _expect(parsed, Model, response)

    def events(self, job: Job | str) -> Iterator[Event]:
        """The job's events in order, from its start; the iteration ends after its final state.

        A stream cut off early is reopened (the API replays it from the start; events already
        given are skipped), within `max_retries`.
        """
        kwargs = stream_job_events._get_kwargs(job_id=_job_id(job))
        seen: set[str] = set()
        attempt = 0
        while True:
            response = self._send(kwargs, headers=_SSE_HEADERS, stream=True)
            failure: httpx.TransportError | None = None
            try:
                for sse in EventSource(response).iter_sse():
                    event = parse(sse)
                    if event is None or event.id in seen:
                        continue
                    if event.id:
                        seen.add(event.id)
                    yield event
                    if isinstance(event, StatusEvent) and event.final:
                        return
            except httpx.TransportError as exc:
                failure = exc
            finally:
                response.close()
            pause = _retry.delay(attempt, self.max_retries)
            if pause is None:
                raise _stream_cut(job, failure, self.base_url) from failure
            time.sleep(pause)
            attempt += 1

    def _send(
        self,
        kwargs: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        external: bool = False,
    ) -> httpx.Response:
        """A 2xx response to the request, after any retries; otherwise the typed error."""
        http = self._core.get_httpx_client()
        attempt = 0
        while True:
            request = self._build(http, kwargs, headers, external)
            try:
                response = http.send(request, stream=stream)
            except httpx.TransportError as exc:
                pause = _transport_delay(exc, attempt, self.max_retries)
                if pause is None:
                    raise _unreachable(exc, self._where(kwargs, external)) from exc
            else:
                if response.is_success:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
                error, pause = _status_failure(response, attempt, self.max_retries)
                if pause is None:
                    raise error
            time.sleep(pause)
            attempt += 1


class AsyncClient(_Base):
    """The asyncio twin of `Client`, with the same methods as coroutines (`events` is an async
    iterator). Event hooks in `httpx_args` must be async functions."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._core.get_async_httpx_client().aclose()

    async def generate(
        self,
        prompt: str,
        *,
        wait: bool = True,
        idempotency_key: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Job:
        """See `Client.generate`."""
        key = idempotency_key or str(uuid.uuid4())
        response = await self._send(
            _generate_kwargs(prompt, options), headers={IDEMPOTENCY_KEY: key}
        )
        job = _expect(
            generate_op._parse_response(client=self._core, response=response), Job, response
        )
        if wait and job.status not in FINAL_STATUSES:
            return await self.wait(job)
        return job

    async def get(self, job: Job | str) -> Job:
        response = await self._send(get_job._get_kwargs(job_id=_job_id(job)))
        return _expect(get_job._parse_response(client=self._core, response=response), Job, response)

    async def wait(self, job: Job | str) -> Job:
        """See `Client.wait`."""
        async for _ in self.events(job):
            pass
        return await self.get(job)

    async def cancel(self, job: Job | str) -> Job:
        """See `Client.cancel`."""
        response = await self._send(cancel_job._get_kwargs(job_id=_job_id(job)))
        return _expect(
            cancel_job._parse_response(client=self._core, response=response), Job, response
        )

    async def download(self, job: Job | str, index: int = 0) -> bytes:
        """See `Client.download`."""
        link = _image_link(job, index)
        if link is not None:
            return (await self._send({"method": "GET", "url": link}, external=True)).content
        response = await self._send(get_image._get_kwargs(job_id=_job_id(job), index=index))
        parsed = get_image._parse_response(client=self._core, response=response)
        return _expect(parsed, File, response).payload.read()

    async def models(self) -> list[Model]:
        response = await self._send(list_models._get_kwargs())
        parsed = list_models._parse_response(client=self._core, response=response)
        return _expect(parsed, ModelList, response).data

    async def model(self, model_id: str) -> Model:
        response = await self._send(get_model._get_kwargs(model_id=model_id))
        parsed = get_model._parse_response(client=self._core, response=response)
        return _expect(parsed, Model, response)

    async def events(self, job: Job | str) -> AsyncIterator[Event]:
        """See `Client.events`."""
        kwargs = stream_job_events._get_kwargs(job_id=_job_id(job))
        seen: set[str] = set()
        attempt = 0
        while True:
            response = await self._send(kwargs, headers=_SSE_HEADERS, stream=True)
            failure: httpx.TransportError | None = None
            try:
                async for sse in EventSource(response).aiter_sse():
                    event = parse(sse)
                    if event is None or event.id in seen:
                        continue
                    if event.id:
                        seen.add(event.id)
                    yield event
                    if isinstance(event, StatusEvent) and event.final:
                        return
            except httpx.TransportError as exc:
                failure = exc
            finally:
                await response.aclose()
            pause = _retry.delay(attempt, self.max_retries)
            if pause is None:
                raise _stream_cut(job, failure, self.base_url) from failure
            await asyncio.sleep(pause)
            attempt += 1

    async def _send(
        self,
        kwargs: Mapping[str, Any],
        *,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        external: bool = False,
    ) -> httpx.Response:
        """See `Client._send`."""
        http = self._core.get_async_httpx_client()
        attempt = 0
        while True:
            request = self._build(http, kwargs, headers, external)
            try:
                response = await http.send(request, stream=stream)
            except httpx.TransportError as exc:
                pause = _transport_delay(exc, attempt, self.max_retries)
                if pause is None:
                    raise _unreachable(exc, self._where(kwargs, external)) from exc
            else:
                if response.is_success:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                error, pause = _status_failure(response, attempt, self.max_retries)
                if pause is None:
                    raise error
            await asyncio.sleep(pause)
            attempt += 1


def _stream_cut(
    job: Job | str, failure: httpx.TransportError | None, base_url: str
) -> errors.APIConnectionError:
    what = f"the events of job {_job_id(job)} at {base_url}"
    if failure is None:
        return errors.APIConnectionError(f"{what} ended before its final state")
    return errors.APIConnectionError(f"{what} broke off: {str(failure) or type(failure).__name__}")
