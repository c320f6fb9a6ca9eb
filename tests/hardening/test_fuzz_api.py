"""Schemathesis over the whole OpenAPI schema of a live uvicorn server, authenticated.

Every operation gets generated cases (valid and invalid ones) and every response is checked: no 5xx,
status code, content type and body conform to the schema, and every error answers in the
specification's format `{"error", "message", "details"}`. A stateful run then follows the schema's
OpenAPI links (models list -> model -> optimize -> status / cancel / results / messages / rollback)
from a real uploaded model. The figures (operations, cases, responses per status) are printed.
"""

from __future__ import annotations

import collections
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.api.model_files import onnx_model
from tests.conftest import LiveServer, free_port, live_server_env
from tests.hardening.conftest import create_user, login, model_ids, upload

# Cases per operation and generation mode: the whole run stays well under two minutes on 2 cores.
# Stateful scenarios: each session that a link starts spawns a worker process on the server, so 15
# scenarios of 12 steps (about 150 calls) keep the run to tens of seconds; FUZZ_STATEFUL_RUNS=30 or
# more for a longer search.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "12"))
STATEFUL_STEPS = int(os.environ.get("FUZZ_STATEFUL_STEPS", "12"))
STATEFUL_RUNS = int(os.environ.get("FUZZ_STATEFUL_RUNS", "15"))
ERROR_KEYS = {"error", "message", "details"}


def error_format(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx with a body is the spec's error object (tus HEAD/204 answers have none)."""
    if response.status_code < 400 or not response.content:
        return None
    body = response.json()
    assert isinstance(body, dict) and set(body) == ERROR_KEYS, f"{case.operation.label}: {body!r}"
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["message"], str) and body["message"], body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    error_format,
]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One live server for the module (a start costs seconds on 2 cores): the whole-schema run, then the
    stateful run, whose scenarios each re-seed a model when an earlier step deleted it."""
    root = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {"MAX_UPLOAD_MB": "1", "DEFAULT_MAX_TRIALS": "1", "DEFAULT_TIME_BUDGET_S": "20"}
    server = LiveServer(
        base_url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=root / "data",
        env=live_server_env(root / "data", port, env),
        log_path=root / "server.log",
    )
    try:
        server.start()
        admin = login(server.base_url)
        # The fuzzer acts as a second administrator: its own user edits cannot lock out the bootstrap admin.
        password = f"fuzz-{uuid.uuid4().hex}"
        create_user(server.base_url, admin, "fuzzer", password, role="admin")
        headers = login(server.base_url, "fuzzer", password)
        r = upload(server.base_url, headers, onnx_model(root / "tiny.onnx"), name="seed")
        assert r.status_code == 200, r.text
        yield {"server": server, "headers": headers, "password": password, "model_id": r.json()["model_id"]}
    finally:
        server.close()


def _auth(target: dict[str, Any], case: Any) -> dict[str, str]:
    if case.operation.path == "/auth/logout":  # logout revokes the token it is sent with: a fresh one
        return login(target["server"].base_url, "fuzzer", target["password"])
    return target["headers"]


def test_schemathesis_whole_schema_no_server_errors(fuzz_target: dict[str, Any]) -> None:
    server = fuzz_target["server"]
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    statuses: collections.Counter[int] = collections.Counter()
    per_operation: dict[str, int] = {}
    failures: dict[str, str] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        count = 0
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                nonlocal count
                headers = _auth(fuzz_target, case)
                response = case.call(base_url=server.base_url, headers=headers, timeout=30)
                count += 1
                statuses[response.status_code] += 1
                where = f"{case.operation.label} [{response.status_code}]"
                try:
                    case.validate_response(response, checks=CHECKS, headers=headers)
                except FailureGroup as exc:  # keep going: one run lists every finding
                    for failure in exc.exceptions:
                        title = getattr(failure, "title", type(failure).__name__)
                        failures.setdefault(f"{where} {title}", str(exc))
                except AssertionError as exc:
                    failures.setdefault(f"{where} error format", str(exc))

            try:
                run()
            except Unsatisfiable:
                # No parameters and no body: there is nothing to make invalid.
                assert mode is GenerationMode.NEGATIVE, operation.label
        per_operation[operation.label] = count
    elapsed = time.monotonic() - started
    total = sum(per_operation.values())
    print(f"\nschemathesis: {len(per_operation)} operations, {total} cases in {elapsed:.1f} s")
    print("responses by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    for label, n in per_operation.items():
        print(f"  {n:4d}  {label}")
    print(f"findings: {len(failures)}")
    for key in failures:
        print(f"  {key}")
    assert not failures, "\n\n".join(list(failures.values())[:5])
    assert len(per_operation) == sum(1 for _ in schema.get_all_operations()) and all(per_operation.values())
    assert not [s for s in statuses if s >= 500]
    assert "Traceback" not in server.log_tail(200_000)


def test_schemathesis_stateful_links(fuzz_target: dict[str, Any], tmp_path: Path) -> None:
    """Sequences that follow the schema's links from the seeded model: optimize, then the session's ops."""
    server = fuzz_target["server"]
    schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
    links = [
        (path, method, code, name)
        for path, ops in schema.raw_schema["paths"].items()
        for method, op in ops.items()
        for code, response in op.get("responses", {}).items()
        for name in response.get("links", {})
    ]
    assert len(links) >= 8, links
    calls: collections.Counter[str] = collections.Counter()
    statuses: collections.Counter[int] = collections.Counter()
    headers = fuzz_target["headers"]

    started_sessions: list[str] = []
    by_link: collections.Counter[str] = collections.Counter()
    seed = tmp_path / "seed.onnx"
    onnx_model(seed)

    class Machine(schema.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            # Each scenario starts with a model to list (an earlier scenario may have deleted it).
            if not model_ids(server, headers):
                assert upload(server.base_url, headers, seed, name="seed").status_code == 200

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": server.base_url, "headers": _auth(fuzz_target, case), "timeout": 30}

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            calls[case.operation.label] += 1
            if "{" in case.operation.path and response.status_code < 300:
                by_link[case.operation.label] += 1  # a real id in the path: only a link could give one
            if case.operation.path == "/optimize" and response.status_code == 200:
                started_sessions.append(response.json()["session_id"])
            statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS, headers=headers)

    started = time.monotonic()
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=STATEFUL_RUNS,
            stateful_step_count=STATEFUL_STEPS,
            # No shrinking: a live server's state changes between replays, which Hypothesis calls flaky.
            phases=[Phase.explicit, Phase.generate],
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    elapsed = time.monotonic() - started
    print(
        f"\nschemathesis stateful: {len(links)} links, {sum(calls.values())} calls over "
        f"{len(calls)} operations in {elapsed:.1f} s"
    )
    print("responses by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))
    for label, n in calls.most_common():
        print(f"  {n:4d}  {label}")
    assert not [s for s in statuses if s >= 500]
    # The links carried real ids: operations on a model or session by its id answered with success.
    print(f"sessions started through links: {len(started_sessions)}; successes on real ids: {dict(by_link)}")
    assert sum(by_link.values()) > 0
