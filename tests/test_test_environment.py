"""The test suite's settings come from the tests, never from the developer's shell (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from state.settings import Settings
from tests.conftest import REPO_ROOT, _controlled, live_server_env

SHELL = {
    "EVENT_BUS": "redis",
    "REDIS_URL": "redis://10.255.255.1:1/0",
    "AUTH_CACHE_TTL_S": "0",
    "ARTIFACT_STORE": "s3://someone-elses-bucket/prefix",
    "S3_ENDPOINT_URL": "http://10.255.255.1:9000",
    "ARTIFACT_CACHE_DIR": "/nonexistent/cache",
    "EVENT_REREAD_S": "99",
    "USER_MAX_MODELS": "1",
    "executor": "ray",  # pydantic-settings reads names case-insensitively
}


def test_every_setting_is_controlled() -> None:
    missing = [name for name in Settings.model_fields if not _controlled(name.upper())]
    assert not missing
    assert all(_controlled(name) for name in SHELL)
    assert not _controlled("TEST_DATABASE_URL") and not _controlled("PATH") and not _controlled("USER")


def test_live_servers_do_not_inherit_the_shells_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in SHELL.items():
        monkeypatch.setenv(name, value)
    env = live_server_env(tmp_path, 8123, {"EVENT_BUS": "local"})
    assert env["EVENT_BUS"] == "local"  # what the test asks for
    assert not {k for k in env if k.upper() in {n.upper() for n in SHELL}} - {"EVENT_BUS"}


def test_in_process_settings_do_not_read_the_shells_settings(tmp_path: Path) -> None:
    """conftest strips them from the environment itself, before any test builds its Settings."""
    script = (
        "import json, sys; from pathlib import Path; import tests.conftest as c; "
        "s = c.make_settings(Path(sys.argv[1])); "
        "print(json.dumps([s.event_bus, s.redis_url, s.auth_cache_ttl_s, s.artifact_store, "
        "s.s3_endpoint_url, s.artifact_cache_dir, s.event_reread_s, s.user_max_models]))"
    )
    env = {**os.environ, **SHELL, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    defaults = Settings.model_fields
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        defaults["event_bus"].default,
        defaults["redis_url"].default,
        defaults["auth_cache_ttl_s"].default,
        None,
        None,
        None,
        defaults["event_reread_s"].default,
        defaults["user_max_models"].default,
    ]
