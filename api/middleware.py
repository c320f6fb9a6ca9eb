"""Request context middleware: request id, access log line, Prometheus metrics, last-resort 500.

Pure ASGI (not BaseHTTPMiddleware) so streamed request and response bodies pass through untouched.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorBody
from api.log import request_id_var
from api.metrics import Metrics

log = logging.getLogger("robopt.access")
error_log = logging.getLogger("robopt.api")

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        # A client-supplied id is kept only if it is short and harmless (it ends up in logs).
        request_id = incoming if _VALID_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            error_log.exception(
                "unhandled error on %s %s", scope.get("method"), _printable(scope.get("path", ""))
            )
            if response_started:
                raise
            status = 500
            await _send_internal_error(send, request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "-")
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            log.info("%s %s %d %.1fms", method, _printable(scope.get("path", "")), status, elapsed * 1000)
            request_id_var.reset(token)


def _printable(text: str) -> str:
    # Paths are percent-decoded: a %0A must not start a forged log line.
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


async def _send_internal_error(send: Send, request_id: str) -> None:
    body = (
        ErrorBody(error="internal_error", message="Internal server error", details={"request_id": request_id})
        .model_dump_json()
        .encode()
    )
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, with a refused preflight answered in the API's error body."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        # Starlette says "Disallowed CORS origin, method" in plain text; keep its CORS headers.
        reason = bytes(response.body).decode("utf-8", errors="replace")
        refused = reason.removeprefix("Disallowed CORS ").split(", ")
        headers = {
            k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
        }
        body = ErrorBody(
            error="cors_forbidden",
            message="CORS preflight refused",
            details={"refused": refused, "reason": reason},
        )
        return JSONResponse(body.model_dump(), status_code=response.status_code, headers=headers)
