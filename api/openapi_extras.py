"""Additions to the generated OpenAPI document that no single route states.

- Errors every operation with a body can answer: 400 (a body that does not parse, e.g. not UTF-8)
  and 413 (past the JSON body limit, api/body_limit.py). Found missing by schemathesis.
- OpenAPI links between operations, so that a client (and schemathesis' stateful run) can follow
  the ids one answer gives to the next request: a listed or uploaded model -> get / download /
  optimize it; a started session -> status, cancel, results, messages, rollback.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.errors import error_responses

_MODEL_OPS = {
    "GetModel": ("/models/{model_id}", "get"),
    "DownloadModel": ("/models/{model_id}/download", "get"),
}
_SESSION_OPS = {
    "GetSessionStatus": ("/sessions/{session_id}/status", "get"),
    "CancelSession": ("/sessions/{session_id}/cancel", "post"),
    "GetSessionResults": ("/sessions/{session_id}/results", "get"),
    "ListSessionMessages": ("/sessions/{session_id}/messages", "get"),
    "PostSessionMessage": ("/sessions/{session_id}/messages", "post"),
    "RollbackSession": ("/sessions/{session_id}/rollback", "post"),
}


def _operation_id(schema: dict[str, Any], path: str, method: str) -> str | None:
    return schema.get("paths", {}).get(path, {}).get(method, {}).get("operationId")


def _links(
    schema: dict[str, Any],
    source: tuple[str, str],
    id_expr: str,
    targets: dict[str, tuple[str, str]],
    param: str,
    *,
    optimize: bool = False,
) -> None:
    path, method = source
    response = schema.get("paths", {}).get(path, {}).get(method, {}).get("responses", {}).get("200")
    if response is None:
        return
    links: dict[str, Any] = response.setdefault("links", {})
    for name, (target_path, target_method) in targets.items():
        op_id = _operation_id(schema, target_path, target_method)
        if op_id:
            links[name] = {"operationId": op_id, "parameters": {param: id_expr}}
    op_id = _operation_id(schema, "/optimize", "post")
    if optimize and op_id:
        # A small budget: a session started by following the link ends in seconds.
        links["OptimizeModel"] = {
            "operationId": op_id,
            "requestBody": {"model_id": id_expr, "max_trials": 1, "time_budget_s": 10},
        }


def _document_body_errors(schema: dict[str, Any]) -> None:
    documented = error_responses(400, 413)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for code, spec in documented.items():
                if str(code) not in responses:
                    responses[str(code)] = {
                        "description": spec["description"],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorBody"},
                                **spec["content"]["application/json"],
                            }
                        },
                    }


def install_openapi_extras(app: FastAPI) -> None:
    """Wrap `app.openapi` (after api.errors' own wrapper) to add the above, once."""
    original = app.openapi
    done = False

    def openapi() -> dict[str, Any]:
        nonlocal done
        schema = original()
        if not done:
            _document_body_errors(schema)
            first_model, uploaded = "$response.body#/items/0/id", "$response.body#/model_id"
            _links(schema, ("/models", "get"), first_model, _MODEL_OPS, "model_id", optimize=True)
            _links(schema, ("/models/upload", "post"), uploaded, _MODEL_OPS, "model_id", optimize=True)
            started, first_session = "$response.body#/session_id", "$response.body#/items/0/session_id"
            _links(schema, ("/optimize", "post"), started, _SESSION_OPS, "session_id")
            _links(schema, ("/sessions", "get"), first_session, _SESSION_OPS, "session_id")
            done = True
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
