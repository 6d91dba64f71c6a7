"""Refusing request bodies over SD3SERVE_MAX_BODY_BYTES before they are read in full.

A pure ASGI middleware, so that it acts before any route buffers a body: a declared
Content-Length over the limit is refused at once, unread; a chunked body is read only up to
the limit, then refused. Either answer closes the connection, which stops the client's upload
rather than leaving the server to read and discard the rest of it.
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTooLarge, error_response
from service.openai_compat import OpenAIError


def too_large_message(max_bytes: int) -> str:
    return (
        f"the request body is larger than {max_bytes} bytes, the most this service accepts "
        "(SD3SERVE_MAX_BODY_BYTES)"
    )


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value)
    return None


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, openai_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # Routes that answer every error in OpenAI's shape, this one included.
        self.openai_paths = frozenset(openai_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            # The server has checked that it is digits, and reads no more than it says.
            if length.isdigit() and int(length) > self.max_bytes:
                await self._refuse(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)
            return
        # Chunked: no size up front. Read up to the limit here, then hand the body on.
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away mid-body: there is no one to answer
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            received.append(message)
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return received.pop(0) if received else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = too_large_message(self.max_bytes)
        response: Response
        if scope["path"] in self.openai_paths:
            response = OpenAIError(BodyTooLarge.status, message, code=BodyTooLarge.code).response()
        else:
            response = error_response(BodyTooLarge.status, BodyTooLarge.code, message)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
