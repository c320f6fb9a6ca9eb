"""Upload a 500 MB model to a live server and measure the server's memory while it receives it.

    python bench/upload_memory.py [--size-mb 500] [--max-growth-mb 100]

Starts `python -m api` on a free port with a temporary DATA_DIR, uploads one warm-up file (so that
first-use imports are not counted), then a safetensors file of exactly `--size-mb` MiB, header
included (one float32 tensor, a valid model file that passes the format checks), sampling the server
process's resident memory every 10 ms. Prints the server's peak RSS growth over its pre-upload level
and the throughput, checks the stored SHA-256, and exits non-zero when the growth exceeds
`--max-growth-mb` (the body must stream to disk, never be held in memory).

The server runs with the service's default upload limit (MAX_UPLOAD_MB=500, in MiB), and the default
file is exactly 500 MiB = 524,288,000 bytes: the largest file a default server accepts, not one
that needs a raised limit. A `--size-mb` above the default raises MAX_UPLOAD_MB to match (and says so).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from live import ServerError, live_server  # bench/live.py, next to this script

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 500  # state.settings.Settings.max_upload_mb


def write_safetensors(path: Path, size_bytes: int) -> str:
    """A safetensors file of exactly `size_bytes` (header included) with one float32 tensor.

    The tensor takes what the 8-byte length, the JSON header and its space padding leave, so the file
    is exactly the size asked for, e.g. exactly the server's default MAX_UPLOAD_MB. Returns its SHA-256.
    """
    if size_bytes % 8 or size_bytes < 1024:
        raise ValueError("size_bytes must be a multiple of 8, at least 1 KiB")

    def header_json(elements: int) -> bytes:
        return json.dumps(
            {"weight": {"dtype": "F32", "shape": [elements], "data_offsets": [0, elements * 4]}}
        ).encode()

    longest = (len(header_json(size_bytes // 4)) + 7) // 8 * 8  # an upper bound on the header
    elements = (size_bytes - 8 - longest) // 4
    elements -= elements % 2  # keeps the header length a multiple of 8 (aligned tensor data)
    header_len = size_bytes - 8 - elements * 4
    header_bytes = header_json(elements).ljust(header_len)  # space padded, as the format allows
    assert len(header_bytes) == header_len and header_len % 8 == 0
    digest = hashlib.sha256()
    block = os.urandom(MiB)  # incompressible, so nothing on the way can shortcut it
    with open(path, "wb") as f:
        head = struct.pack("<Q", header_len) + header_bytes
        f.write(head)
        digest.update(head)
        remaining = elements * 4
        while remaining:
            chunk = block[: min(MiB, remaining)]
            f.write(chunk)
            digest.update(chunk)
            remaining -= len(chunk)
    if path.stat().st_size != size_bytes:
        raise AssertionError(f"{path} is {path.stat().st_size} bytes, not {size_bytes}")
    return digest.hexdigest()


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                rss = self.process.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def upload(client: httpx.Client, headers: dict[str, str], path: Path, name: str) -> httpx.Response:
    with open(path, "rb") as f:
        return client.post(
            "/models/upload",
            headers=headers,
            files={"file": (path.name, f, "application/octet-stream")},
            data={"name": name},
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb",
        type=int,
        default=DEFAULT_MAX_UPLOAD_MB,
        help="size of the uploaded file in MiB, header included (default: the default upload limit)",
    )
    parser.add_argument("--max-growth-mb", type=float, default=100.0, help="fail above this RSS growth")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="robopt-bench-") as tmp:
        tmp_path = Path(tmp)
        extra_env = {}
        limit_mb = DEFAULT_MAX_UPLOAD_MB
        if args.size_mb > DEFAULT_MAX_UPLOAD_MB:
            limit_mb = args.size_mb
            extra_env["MAX_UPLOAD_MB"] = str(limit_mb)
            print(f"note: --size-mb {args.size_mb} is above the default limit; MAX_UPLOAD_MB={limit_mb}")
        print(
            f"writing a {args.size_mb} MiB safetensors file (exactly {args.size_mb * MiB} bytes; "
            f"server limit MAX_UPLOAD_MB={limit_mb}"
            f"{' (default)' if limit_mb == DEFAULT_MAX_UPLOAD_MB else ''}) ...",
            flush=True,
        )
        big = tmp_path / "big_model.safetensors"
        expected_sha = write_safetensors(big, args.size_mb * MiB)
        small = tmp_path / "warmup.safetensors"
        write_safetensors(small, MiB)
        size = big.stat().st_size

        try:
            with live_server(tmp_path, extra_env) as server:
                headers = server.login()
                with httpx.Client(base_url=server.base_url, timeout=600) as client:
                    warm = upload(client, headers, small, "warm-up")
                    assert warm.status_code == 200, warm.text

                    baseline = psutil.Process(server.pid).memory_info().rss
                    sampler = RssSampler(server.pid)
                    sampler.start()
                    started = time.perf_counter()
                    r = upload(client, headers, big, f"{args.size_mb} MiB model")
                    elapsed = time.perf_counter() - started
                    peak = sampler.stop()

                if r.status_code != 200:
                    print(f"upload failed: {r.status_code} {r.text[:500]}", file=sys.stderr)
                    return 1
                body = r.json()
                leftovers = [p for p in (server.data_dir / "uploads").iterdir()]
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1

    growth_mb = (peak - baseline) / MiB
    throughput = size / MiB / elapsed
    print(f"file size:            {size / MiB:.1f} MiB ({size} bytes, {size / 1e6:.1f} MB)")
    print(
        f"upload limit:         MAX_UPLOAD_MB={limit_mb} ({limit_mb * MiB} bytes), "
        f"file at {size / (limit_mb * MiB):.0%} of it"
    )
    print(f"upload time:          {elapsed:.2f} s")
    print(f"throughput:           {throughput:.1f} MiB/s")
    print(f"server RSS before:    {baseline / MiB:.1f} MiB")
    print(f"server RSS peak:      {peak / MiB:.1f} MiB ({sampler.samples} samples)")
    print(f"peak RSS growth:      {growth_mb:.1f} MiB (limit {args.max_growth_mb:.0f} MiB)")
    print(f"sha256 matches:       {body['sha256'] == expected_sha}")
    print(f"temporary files left: {len(leftovers)}")
    ok = growth_mb <= args.max_growth_mb and body["sha256"] == expected_sha and not leftovers
    print("RESULT: " + ("memory stayed flat" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
