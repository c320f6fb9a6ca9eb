"""Upload a 5 GB model through tus with the connection dropped twice midway; measure the server.

    python bench/tus_upload.py [--size-gb 5] [--drops 2] [--chunk-mb 64] [--max-growth-mb 50]

Starts `python -m api` on a free port with a temporary DATA_DIR and puts a small TCP proxy in front of
it that cuts the connection (both directions, mid-PATCH) when the bytes sent reach each of `--drops`
evenly spaced points. The `tuspy` client, unchanged, uploads a safetensors file of `--size-gb` GiB
through the proxy: the file is generated on the fly (a header, then 1 MiB blocks each stamped with
its index), never written on the client's disk nor held in RAM. tuspy's own retry asks the server's
offset (HEAD) and resumes from the bytes the server has on disk. Then POST /models/from-upload
registers it and the server's SHA-256 is compared with the client's. The server's resident memory is
sampled every 10 ms; the script exits non-zero when the upload did not resume after each drop, the
digests differ, or the RSS growth exceeds `--max-growth-mb`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import socket
import struct
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
from live import ServerError, live_server  # bench/live.py, next to this script
from upload_memory import RssSampler

MiB = 1024 * 1024
GiB = 1024 * MiB


class GeneratedSafetensors(io.RawIOBase):
    """A seekable, read-only safetensors file of exactly `size` bytes, computed on each read."""

    def __init__(self, size: int) -> None:
        if size % 8 or size < MiB:
            raise ValueError("size must be a multiple of 8, at least 1 MiB")
        self.size = size
        longest = (len(self._header(size // 4)) + 7) // 8 * 8
        elements = (size - 8 - longest) // 4
        elements -= elements % 2  # keeps the header a multiple of 8
        header_len = size - 8 - elements * 4
        self.head = struct.pack("<Q", header_len) + self._header(elements).ljust(header_len)
        self.block = bytearray(os.urandom(MiB))
        self.position = 0

    @staticmethod
    def _header(elements: int) -> bytes:
        return json.dumps(
            {"weight": {"dtype": "F32", "shape": [elements], "data_offsets": [0, elements * 4]}}
        ).encode()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, min(self.size, base + offset))
        return self.position

    def _data_block(self, index: int) -> bytes:
        self.block[:8] = index.to_bytes(8, "little")  # a block out of place changes the digest
        return bytes(self.block)

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(buffer).cast("B")
        n = min(len(view), self.size - self.position)
        filled = 0
        while filled < n:
            pos = self.position + filled
            if pos < len(self.head):
                piece = self.head[pos : pos + n - filled]
            else:
                rel = pos - len(self.head)
                block = self._data_block(rel // MiB)
                piece = block[rel % MiB : rel % MiB + n - filled]
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
        self.position += n
        return n

    def sha256(self) -> str:
        digest = hashlib.sha256()
        self.seek(0)
        buffer = bytearray(8 * MiB)
        while n := self.readinto(buffer):
            digest.update(memoryview(buffer)[:n])
        self.seek(0)
        return digest.hexdigest()


class DroppingProxy(threading.Thread):
    """Forwards TCP to the server; closes the live connection when client bytes cross each drop point."""

    def __init__(self, target_port: int, drop_at: list[int]) -> None:
        super().__init__(daemon=True)
        self.target_port = target_port
        self.drop_at = sorted(drop_at)
        self.sent = 0  # client -> server bytes, all connections together
        self.drops: list[int] = []
        self.connections = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump_up, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(upstream, client), daemon=True).start()

    def _cut(self, *sockets: socket.socket) -> None:
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                # shutdown first: a bare close() would not wake the other pump blocked in recv().
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass

    def _pump_up(self, client: socket.socket, upstream: socket.socket) -> None:
        try:
            while data := client.recv(256 * 1024):
                with self.lock:
                    self.sent += len(data)
                    cut = bool(self.drop_at) and self.sent >= self.drop_at[0]
                    if cut:
                        self.drops.append(self.drop_at.pop(0))
                if cut:
                    self._cut(client, upstream)
                    return
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            try:
                upstream.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _pump_down(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(256 * 1024):
                client.sendall(data)
        except OSError:
            pass
        finally:
            self._cut(client, upstream)

    def close(self) -> None:
        self.listener.close()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / GiB
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}"


def run(size: int, drops: int, chunk_size: int, max_growth_mb: float) -> int:
    from tusclient import client as tus_client

    with tempfile.TemporaryDirectory(prefix="robopt-bench-tus-") as tmp:
        tmp_path = Path(tmp)
        gb_limit = max(50.0, size / GiB + 1)
        env = {"MAX_RESUMABLE_UPLOAD_GB": str(gb_limit), "USER_STORAGE_QUOTA_GB": str(gb_limit * 2)}
        source = GeneratedSafetensors(size)
        print(f"file: {size} bytes ({size / GiB:.2f} GiB), generated on the fly; hashing it ...", flush=True)
        expected = source.sha256()
        try:
            with live_server(tmp_path, env) as server:
                headers = server.login()
                port = int(server.base_url.rsplit(":", 1)[1])
                points = [size * (i + 1) // (drops + 1) for i in range(drops)]
                proxy = DroppingProxy(port, points)
                proxy.start()
                url = f"http://127.0.0.1:{proxy.port}/uploads"
                tus = tus_client.TusClient(url, headers=headers)

                # Warm-up: first-use imports and the registration path, before the baseline.
                warm = GeneratedSafetensors(MiB)
                up = tus.uploader(file_stream=warm, chunk_size=MiB, metadata={"filename": "warm.safetensors"})
                up.upload()
                r = httpx.post(
                    f"{server.base_url}/models/from-upload",
                    headers=headers,
                    json={"upload_id": up.url.rsplit("/", 1)[-1], "name": "warm-up"},
                    timeout=120,
                )
                assert r.status_code == 200, r.text
                proxy.sent = 0

                resumed_at: list[int] = []
                uploader = tus.uploader(
                    file_stream=source,
                    chunk_size=chunk_size,
                    metadata={"filename": "big_model.safetensors"},
                    retries=5,
                    retry_delay=1,
                )
                original_get_offset = uploader.get_offset

                def get_offset() -> int:
                    offset = original_get_offset()
                    resumed_at.append(offset)
                    return offset

                uploader.get_offset = get_offset  # type: ignore[method-assign]
                baseline = psutil.Process(server.pid).memory_info().rss
                sampler = RssSampler(server.pid)
                sampler.start()
                started = time.perf_counter()
                try:
                    uploader.upload()
                except Exception:
                    print(server.log_tail(6000), file=sys.stderr)
                    raise
                elapsed = time.perf_counter() - started
                peak = sampler.stop()
                sent = proxy.sent
                proxy.close()

                r = httpx.post(
                    f"{server.base_url}/models/from-upload",
                    headers=headers,
                    json={"upload_id": uploader.url.rsplit("/", 1)[-1], "name": "5 GB by tus"},
                    timeout=600,
                )
                if r.status_code != 200:
                    print(f"from-upload failed: {r.status_code} {r.text[:500]}", file=sys.stderr)
                    return 1
                body = r.json()
                leftovers = list((server.data_dir / "uploads" / "resumable").iterdir())
        except ServerError as exc:
            print(exc, file=sys.stderr)
            return 1

    growth_mb = (peak - baseline) / MiB
    resent = sent - size
    resumed = (
        len(proxy.drops) == drops and len(resumed_at) >= drops and all(0 < off < size for off in resumed_at)
    )
    ok = resumed and body["sha256"] == expected and growth_mb <= max_growth_mb and not leftovers
    print(f"date:                 {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"machine:              {machine()}")
    print(f"file size:            {size / GiB:.2f} GiB ({size} bytes), chunk {chunk_size // MiB} MiB")
    print(f"connections dropped:  {len(proxy.drops)} at bytes {proxy.drops}")
    print(f"resumed at offsets:   {resumed_at} (server's HEAD after each drop)")
    print(f"bytes sent:           {sent} ({resent} resent after the drops)")
    print(f"upload time:          {elapsed:.1f} s (retry delays included)")
    print(f"throughput:           {size / MiB / elapsed:.1f} MiB/s")
    print(f"server RSS before:    {baseline / MiB:.1f} MiB")
    print(f"server RSS peak:      {peak / MiB:.1f} MiB ({sampler.samples} samples)")
    print(f"peak RSS growth:      {growth_mb:.1f} MiB (limit {max_growth_mb:.0f} MiB)")
    print(f"sha256 matches:       {body['sha256'] == expected} ({expected[:16]}...)")
    print(f"upload files left:    {len(leftovers)}")
    print("RESULT: " + ("resumed, verified, memory flat" if ok else "FAILED"))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-gb", type=float, default=5.0, help="GiB to upload (default 5)")
    parser.add_argument("--drops", type=int, default=2, help="connections cut midway (default 2)")
    parser.add_argument("--chunk-mb", type=int, default=64, help="tuspy's chunk size in MiB (default 64)")
    parser.add_argument("--max-growth-mb", type=float, default=50.0, help="fail above this server RSS growth")
    args = parser.parse_args()
    size = int(args.size_gb * GiB) // 8 * 8
    return run(size, args.drops, args.chunk_mb * MiB, args.max_growth_mb)


if __name__ == "__main__":
    sys.exit(main())
