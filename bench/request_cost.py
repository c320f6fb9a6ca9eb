"""Server CPU per request: an authenticated status poll against `/health`, measured sequentially.

    python bench/request_cost.py [--requests 3000] [--warmup 300]

Starts `python -m api` (bench/live.py: SQLite, embedded defaults), logs in, uploads a small MLP
policy and runs a one-trial session to completion, so that its status is a real row. Then, on one
keep-alive connection (bench/lean_http.py, so that the client costs little), it sends `--requests`
requests one after the other to each endpoint and reads the CPU time (user + system, all threads)
of the server process before and after with psutil. CPU per request = that delta / requests; the
client's own CPU and the wall time per request are printed beside it. The server is otherwise idle,
so the delta is the requests' cost (plus a little background noise: uvicorn's timers, the upload
cleanup loop), which `--idle-seconds` measures separately and subtracts.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from lean_http import LeanConnection
from live import ServerError, live_server
from status_polling import QUICK, SMALL, start_session, upload_policy, wait_status, write_policy


def cpu_s(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system


async def sequential(base_url: str, headers: dict[str, str], path: str, n: int) -> float:
    conn = LeanConnection(base_url, headers)
    await conn.connect()
    started = time.perf_counter()
    for _ in range(n):
        status, body = await conn.get(path)
        if status != 200:
            raise ServerError(f"GET {path} answered {status}: {body[:300]!r}")
    elapsed = time.perf_counter() - started
    await conn.close()
    return elapsed


def measure(
    server_pid: int, base_url: str, headers: dict[str, str], path: str, args: argparse.Namespace, idle: float
) -> tuple[float, float, float]:
    """(server CPU ms, client CPU ms, wall ms) per request."""
    asyncio.run(sequential(base_url, headers, path, args.warmup))
    server, me = psutil.Process(server_pid), psutil.Process()
    s0, c0 = cpu_s(server), cpu_s(me)
    wall = asyncio.run(sequential(base_url, headers, path, args.requests))
    s1, c1 = cpu_s(server), cpu_s(me)
    server_s = max(0.0, (s1 - s0) - idle * wall)
    return 1000 * server_s / args.requests, 1000 * (c1 - c0) / args.requests, 1000 * wall / args.requests


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="background CPU measured this long")
    parser.add_argument("--target-ms", type=float, default=1.0, help="the status poll's CPU budget")
    args = parser.parse_args()
    print(
        f"{args.requests} sequential requests per endpoint; {psutil.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in psutil.getloadavg())}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="robopt-cost-") as tmp:
        tmp_path = Path(tmp)
        small = write_policy(tmp_path, "small_mlp", SMALL)
        try:
            with (
                live_server(tmp_path / "server") as server,
                httpx.Client(base_url=server.base_url, timeout=60) as client,
            ):
                headers = server.login()
                model_id = upload_policy(client, headers, *small)
                session_id = start_session(client, headers, model_id, QUICK)
                wait_status(client, headers, session_id, ("completed",), timeout_s=180)
                proc = psutil.Process(server.pid)
                time.sleep(1.0)
                i0 = cpu_s(proc)
                time.sleep(args.idle_seconds)
                idle = (cpu_s(proc) - i0) / args.idle_seconds  # CPU seconds per second while idle
                rows = [
                    ("/health", measure(server.pid, server.base_url, {}, "/health", args, idle)),
                    (
                        "GET /sessions/{id}/status",
                        measure(
                            server.pid, server.base_url, headers, f"/sessions/{session_id}/status", args, idle
                        ),
                    ),
                ]
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1
    print(f"\nidle server background: {1000 * idle:.2f} ms CPU per second (subtracted)")
    print(f"{'endpoint':<28}{'server CPU/req':>16}{'client CPU/req':>16}{'wall/req':>11}")
    for name, (server_ms, client_ms, wall_ms) in rows:
        print(f"{name:<28}{server_ms:>13.3f} ms{client_ms:>13.3f} ms{wall_ms:>8.3f} ms")
    status_ms = rows[1][1][0]
    ok = status_ms <= args.target_ms
    print(
        f"\nRESULT: an authenticated status poll costs {status_ms:.3f} ms of server CPU "
        f"(target {args.target_ms:g} ms): {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
