"""`make demo`: start a real server on the embedded defaults, run examples/api_demo.py against it, stop it.

The server gets a free port and a temporary DATA_DIR (SQLite, artifacts, generated secret), so the demo
touches nothing of yours and leaves nothing behind. Exits with the demo's status (non-zero on failure),
printing the end of the server log when something went wrong.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_PASSWORD = "demo-admin-password"
# Settings the surrounding shell must not leak into the demo server.
CONTROLLED = ("API_", "LLM_", "ADMIN_", "JWT_", "DATABASE_URL", "DATA_DIR", "ENVIRONMENT", "MAX_UPLOAD_MB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(base_url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server was not healthy after {timeout_s:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main() -> int:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="robopt-demo-") as tmp:
        data_dir = Path(tmp) / "data"
        log_path = Path(tmp) / "server.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(CONTROLLED)}
        env.update(
            {
                "DATA_DIR": str(data_dir),
                "API_HOST": "127.0.0.1",
                "API_PORT": str(port),
                "API_RELOAD": "false",
                "ADMIN_PASSWORD": DEMO_PASSWORD,
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if os.environ.get("LLM_MODEL"):  # an LLM configured by the user is used; otherwise the rules planner
            env.update({k: v for k, v in os.environ.items() if k.startswith("LLM_")})
        print(f"Starting robopt on {base_url} (DATA_DIR={data_dir}, SQLite, log {log_path})", flush=True)
        started = time.monotonic()
        with open(log_path, "wb") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "api"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
            status = 1
            try:
                wait_healthy(base_url, server, timeout_s=120)
                print(f"Server healthy after {time.monotonic() - started:.1f} s", flush=True)
                demo = subprocess.run(
                    [
                        sys.executable,
                        str(REPO_ROOT / "examples" / "api_demo.py"),
                        "--base-url",
                        base_url,
                        "--username",
                        "admin",
                        "--password",
                        DEMO_PASSWORD,
                        *sys.argv[1:],
                    ],
                    cwd=REPO_ROOT,
                    env={**env, "PYTHONPATH": str(REPO_ROOT)},
                )
                status = demo.returncode
            except RuntimeError as exc:
                print(f"DEMO FAILED: {exc}", file=sys.stderr)
            finally:
                stop(server)
        if status != 0:
            print("\n--- last lines of the server log ---", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-5000:], file=sys.stderr)
        print(
            f"\nServer stopped. Demo {'succeeded' if status == 0 else 'FAILED'} "
            f"in {time.monotonic() - started:.1f} s."
        )
    return status


if __name__ == "__main__":
    sys.exit(main())
