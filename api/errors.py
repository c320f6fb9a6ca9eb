"""The one error body of the API, `{"error", "message", "details"}`, and the handlers that produce it.

Route code raises `ApiError`; FastAPI's validation errors, Starlette's HTTP errors (unknown routes,
wrong methods) and unhandled exceptions are converted to the same body with the spec's status codes.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("robopt.api")

Details = str | list[Any] | dict[str, Any] | None


class ErrorBody(BaseModel):
    error: str = Field(description="Stable machine-readable error code.", examples=["validation_error"])
    message: str = Field(
        description="What went wrong, for a person.", examples=["Invalid request parameters"]
    )
    details: Details = Field(default=None, description="More context (field errors, limits).")


class ApiError(Exception):
    """Raise anywhere in a request to answer with the spec's error body."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str,
        details: Details = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.message = message
        self.details = details
        self.headers = headers


# Default code and message per status, used for HTTP errors raised by the framework itself.
_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Not authenticated"),
    403: ("forbidden", "Insufficient permissions"),
    404: ("not_found", "Resource not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the current state of the resource"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Invalid request parameters"),
    429: ("rate_limited", "Too many requests"),
    500: ("internal_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable"),
}

# One example per status for the OpenAPI documentation of each route.
_EXAMPLES: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "Bad request",
        {
            "error": "unsupported_format",
            "message": "File extension '.exe' is not accepted",
            "details": {"allowed_extensions": [".onnx", ".pt", ".pth", ".pt2", ".safetensors", ".h5", ".pb"]},
        },
    ),
    401: (
        "Missing, invalid, expired or revoked token",
        {"error": "unauthorized", "message": "Invalid or expired token", "details": "Signature has expired"},
    ),
    403: (
        "Authenticated but not allowed",
        {"error": "forbidden", "message": "Administrator role required", "details": "role: user"},
    ),
    404: (
        "Not found (or owned by another user)",
        {"error": "not_found", "message": "Model not found", "details": "model_id: 3f2a..."},
    ),
    409: (
        "Conflict",
        {
            "error": "conflict",
            "message": "Model is used by a running optimization; cancel it first",
            "details": "session_id: 9c1b...",
        },
    ),
    413: (
        "File too large",
        {
            "error": "payload_too_large",
            "message": "Upload exceeds the size limit",
            "details": {"max_bytes": 524288000},
        },
    ),
    422: (
        "Validation error",
        {
            "error": "validation_error",
            "message": "Invalid request parameters",
            "details": "model_id: Field required",
        },
    ),
    429: (
        "Rate limited",
        {
            "error": "rate_limited",
            "message": "Too many failed logins for this user from this address; retry later",
            "details": {"retry_after_s": 42},
        },
    ),
    500: (
        "Internal error",
        {"error": "internal_error", "message": "Internal server error", "details": {"request_id": "5d0c..."}},
    ),
    503: (
        "Service unavailable",
        {"error": "service_unavailable", "message": "Database unreachable", "details": {"version": "0.1.0"}},
    ),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: each listed status documented with the error body and an example."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, example = _EXAMPLES.get(code, (_STATUS_ERRORS.get(code, ("error", "Error"))[1], {}))
        out[code] = {
            "model": ErrorBody,
            "description": description,
            "content": {"application/json": {"example": example}},
        }
    return out


def error_response(
    status_code: int, error: str, message: str, details: Details = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorBody(error=error, message=message, details=details).model_dump()
    return JSONResponse(status_code=status_code, content=body, headers=headers)


def _format_location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "cookie")]
    return ".".join(parts) or str(loc[0] if loc else "request")


def validation_details(errors: list[dict[str, Any]]) -> str:
    """`"model_id: Field required; limit: ..."`, the spec's string form of the details."""
    return "; ".join(f"{_format_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors)


async def _api_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.error, exc.message, exc.details, exc.headers)


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(
        422, "validation_error", "Invalid request parameters", validation_details(exc.errors())
    )


async def _http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    error, default_message = _STATUS_ERRORS.get(exc.status_code, ("http_error", "HTTP error"))
    message = exc.detail if isinstance(exc.detail, str) and exc.detail else default_message
    if exc.status_code == 404 and message == "Not Found":
        message = f"No route for {request.method} {request.url.path}"
    if exc.status_code == 405 and message == "Method Not Allowed":
        message = f"Method {request.method} is not allowed on {request.url.path}"
    return error_response(exc.status_code, error, message, None, getattr(exc, "headers", None))


def document_validation_errors(app: FastAPI) -> None:
    """Make every route's generated 422 response document the error body, not FastAPI's default."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        _, example = _EXAMPLES[422]
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault(
            "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
        )
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422")
                if not response:
                    continue
                content = response.setdefault("content", {}).setdefault("application/json", {})
                if "HTTPValidationError" in str(content.get("schema", "")):
                    content["schema"] = {"$ref": "#/components/schemas/ErrorBody"}
                    content["example"] = example
                    response["description"] = "Validation error"
        for unused in ("HTTPValidationError", "ValidationError"):
            if unused not in str(schema.get("paths")):
                schemas.pop(unused, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    document_validation_errors(app)
    # Unhandled exceptions are caught by RequestContextMiddleware (api/middleware.py) so that the
    # 500 body still carries the request id header; see there.
