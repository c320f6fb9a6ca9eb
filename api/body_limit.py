"""A size limit on every request body that is not a file upload (JSON, forms): 413 in the error format.

The declared Content-Length is checked before anything is read; a chunked body is counted while the
app reads it and cut off at the limit. File uploads stream to disk under their own limits
(api/uploads.py, the tus PATCH), and so does login: they are left alone here. Pure ASGI.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorBody

# (method, path) of routes with limits of their own: file uploads, login (16 KiB, api/routers/auth.py).
_OWN_LIMIT_ROUTES = (
    ("POST", re.compile(r"^/auth/login/?$")),
    ("POST", re.compile(r"^/models/upload/?$")),
    ("POST", re.compile(r"^/models/[^/]+/evaluation-data/?$")),
    ("PATCH", re.compile(r"^/uploads/[^/]+/?$")),
)


class _TooLarge(HTTPException):
    """Raised from `receive`: an HTTPException, so that FastAPI's body parsing passes it on (any other
    exception there becomes a 400) and the app's handler answers 413 in the error format."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"Request body exceeds {max_bytes} bytes (MAX_JSON_BODY_KB)")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(
            scope.get("method") == method and pattern.match(scope.get("path", ""))
            for method, pattern in _OWN_LIMIT_ROUTES
        ):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if started:
                raise
            await self._refuse(send, None)

    async def _refuse(self, send: Send, declared: int | None) -> None:
        details: dict[str, int] = {"max_bytes": self.max_bytes}
        if declared is not None:
            details["declared_bytes"] = declared
        body = (
            ErrorBody(
                error="payload_too_large",
                message=f"Request body exceeds {self.max_bytes} bytes (MAX_JSON_BODY_KB)",
                details=details,
            )
            .model_dump_json()
            .encode()
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
