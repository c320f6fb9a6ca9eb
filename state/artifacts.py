"""Versioned artifact store: files under DATA_DIR/artifacts/<namespace>/<id>/, written atomically.

A file is first written next to its destination and then renamed, so a crash never leaves a
half-written artifact under a final name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def directory(self, namespace: str, key: str) -> Path:
        path = self.root / _safe(namespace) / _safe(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    @contextmanager
    def atomic_path(self, destination: Path) -> Iterator[Path]:
        """Yield a temporary path in the destination's folder; rename it into place on success."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=".tmp-", suffix=destination.suffix)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            os.replace(tmp_path, destination)
        finally:
            tmp_path.unlink(missing_ok=True)

    def put_file(self, source: Path, namespace: str, key: str, filename: str) -> Path:
        """Copy `source` into the store atomically and return its final path."""
        destination = self.directory(namespace, key) / _safe(filename)
        with self.atomic_path(destination) as tmp:
            shutil.copyfile(source, tmp)
        return destination

    def remove(self, namespace: str, key: str) -> None:
        shutil.rmtree(self.root / _safe(namespace) / _safe(key), ignore_errors=True)


def new_id() -> str:
    return uuid.uuid4().hex


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _safe(part: str) -> str:
    if not part or "/" in part or "\\" in part or part in {".", ".."} or "\x00" in part:
        raise ValueError(f"unsafe path component: {part!r}")
    return part
