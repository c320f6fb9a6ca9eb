"""One live server for the client tests, started through the `robopt serve` console script (so the
script and its `serve` command are exercised too), and a runner that invokes the client in-process
with its own config directory."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.app import app
from tests.conftest import REPO_ROOT, LiveServer, free_port, live_server_env

ROBOPT = Path(sys.executable).with_name("robopt")


@dataclass
class ServedByScript(LiveServer):
    """A LiveServer whose process is `robopt serve --host 127.0.0.1 --port P`."""

    def start(self, timeout_s: float = 90.0) -> LiveServer:
        if not ROBOPT.is_file():
            raise RuntimeError(f"the console script {ROBOPT} is missing: run `make install`")
        log = open(self.log_path, "ab")
        self._log_files.append(log)
        self.process = subprocess.Popen(
            [str(ROBOPT), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--no-reload"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not become healthy in {timeout_s} s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("cli-server")
    port = free_port()
    data_dir = root / "data"
    # API_PORT points elsewhere: the server must listen where `--port` says.
    env = live_server_env(data_dir, port, {"API_PORT": str(free_port()), "MAX_UPLOAD_MB": "20"})
    srv = ServedByScript(
        base_url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=data_dir,
        env=env,
        log_path=root / "server.log",
    )
    srv.start()
    yield srv
    srv.close()


class Robopt:
    """`robopt ...` in-process, with this test's config directory and server."""

    def __init__(self, config_home: Path, base_url: str) -> None:
        self.config_home = config_home
        self.base_url = base_url
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None, **env: str | None) -> Result:
        environment: dict[str, str | None] = {
            "XDG_CONFIG_HOME": str(self.config_home),
            "ROBOPT_URL": self.base_url,
            "ROBOPT_TOKEN": None,
            "ROBOPT_PASSWORD": None,
            "COLUMNS": "200",
            **env,
        }
        return self.runner.invoke(app, list(args), input=input, env=environment)

    @property
    def credentials(self) -> Path:
        return self.config_home / "robopt" / "credentials.json"


@pytest.fixture
def robopt(tmp_path: Path, server: LiveServer) -> Robopt:
    return Robopt(tmp_path / "config", server.base_url)
