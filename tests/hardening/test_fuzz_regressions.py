"""Regression tests for what schemathesis found (tests/hardening/test_fuzz_api.py), one per finding."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from api.schemas.common import MAX_PAGE_OFFSET
from tests.conftest import AuthHeaders

ERROR_KEYS = {"error", "message", "details"}


async def test_login_body_that_is_not_utf8_is_422_not_500(client: httpx.AsyncClient) -> None:
    # Was a 500: json.loads raised UnicodeDecodeError, which the handler did not catch.
    r = await client.post(
        "/auth/login", content=b"i7\xd6Q\xa5\x19a", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert set(r.json()) == ERROR_KEYS and r.json()["message"] == "Body is not valid JSON"


@pytest.mark.parametrize("path", ["/models", "/sessions", "/users"])
async def test_offset_past_the_cap_is_422_not_500(
    client: httpx.AsyncClient, admin_headers: AuthHeaders, path: str
) -> None:
    # Was a 500: an offset past 2**63 overflowed SQLite's INTEGER in the query.
    r = await client.get(path, params={"offset": 2**64}, headers=admin_headers)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "validation_error" and "offset" in r.json()["details"]
    ok = await client.get(path, params={"offset": MAX_PAGE_OFFSET}, headers=admin_headers)
    assert ok.status_code == 200 and ok.json()["items"] == []


def test_statuses_the_server_gives_are_documented(app: FastAPI) -> None:
    schema = app.openapi()
    paths = schema["paths"]
    # A body that does not parse (not UTF-8) is 400; the JSON body limit is 413: every body route says so.
    for path, operations in paths.items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert {"400", "413"} <= set(operation["responses"]), (method, path)
    # tus answers 412 without Tus-Resumable on every /uploads/{id} method.
    for method in ("head", "patch", "delete"):
        assert "412" in paths["/uploads/{upload_id}"][method]["responses"], method


def test_openapi_links_chain_models_to_sessions(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    listed = paths["/models"]["get"]["responses"]["200"]["links"]
    assert listed["OptimizeModel"]["requestBody"]["model_id"] == "$response.body#/items/0/id"
    started = paths["/optimize"]["post"]["responses"]["200"]["links"]
    assert {"GetSessionStatus", "CancelSession", "GetSessionResults"} <= set(started)
    op_ids = {op.get("operationId") for ops in paths.values() for op in ops.values()}
    for links in (listed, started):
        assert all(link["operationId"] in op_ids for link in links.values())
