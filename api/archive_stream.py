"""A model directory sent as a tar archive built on the fly: no second copy of the model on disk.

`tarfile` writes in stream mode ("w|") from a worker thread into a bounded queue of 1 MiB blocks; the
response iterates the queue. The thread blocks while the queue is full, so memory stays at a few
blocks however large the model, and it stops when the client goes away (the response's iterator is
closed and sets the stop flag). Members are the directory's regular files under one top-level folder
(what people expect to unpack, and what the upload strips again), with owner and group ids zeroed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import queue
import stat
import tarfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path

log = logging.getLogger("robopt.models")

BLOCK = 1 << 20
QUEUE_BLOCKS = 8
_DONE = object()


class _Stopped(Exception):
    """The reader went away; the writer thread ends quietly."""


class _QueueWriter(io.RawIOBase):
    """A write-only file object that hands its bytes to the queue in BLOCK-sized pieces."""

    def __init__(self, out: queue.Queue[object], stop: threading.Event) -> None:
        self.out = out
        self.stop = stop
        self.pending = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.pending.extend(data)
        while len(self.pending) >= BLOCK:
            self._put(bytes(self.pending[:BLOCK]))
            del self.pending[:BLOCK]
        return len(data)

    def flush_all(self) -> None:
        if self.pending:
            self._put(bytes(self.pending))
            self.pending.clear()

    def _put(self, item: object) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped


def directory_files(root: Path) -> list[Path]:
    """The regular files under `root`, sorted by relative path (links and special files left out)."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if stat.S_ISREG(path.lstat().st_mode):
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _write_tar(root: Path, folder: str, writer: _QueueWriter) -> None:
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in directory_files(root):
            with open(path, "rb") as fh:
                info = tar.gettarinfo(arcname=f"{folder}/{path.relative_to(root).as_posix()}", fileobj=fh)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o644
                tar.addfile(info, fh)
    writer.flush_all()


async def stream_directory_tar(root: Path, folder: str) -> AsyncIterator[bytes]:
    """The tar archive of `root` (its files under `folder/`), block by block."""
    out: queue.Queue[object] = queue.Queue(maxsize=QUEUE_BLOCKS)
    stop = threading.Event()
    errors: list[BaseException] = []

    def produce() -> None:
        writer = _QueueWriter(out, stop)
        try:
            _write_tar(root, folder, writer)
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - reported by the reader below
            errors.append(exc)
        try:
            writer._put(_DONE)
        except _Stopped:
            pass

    def take() -> object:
        while not stop.is_set():
            try:
                return out.get(timeout=0.5)
            except queue.Empty:
                continue
        return _DONE

    thread = threading.Thread(target=produce, name="robopt-tar-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await asyncio.to_thread(take)
            if item is _DONE:
                break
            yield item  # type: ignore[misc]
        if errors:
            log.error("streaming %s as tar failed: %s", root, errors[0])
            raise errors[0]
    finally:
        stop.set()
