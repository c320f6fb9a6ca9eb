"""Versioned artifact store: files under <namespace>/<id>/, written atomically, with sha256 checksums.

Files are first written to a local working tree (DATA_DIR/artifacts): next to their destination and
then renamed, so a crash never leaves a half-written artifact under a final name. Each `put_file`
also records the file's sha256 in a sidecar `<name>.sha256`, and `open_verified`/`local_copy`
check it on read: a corrupted artifact raises `ArtifactCorruptedError`, it is never loaded as a
model.

ARTIFACT_STORE may name shared storage instead of the local default: `s3://bucket/prefix` (fsspec
with s3fs; any S3-compatible server through S3_ENDPOINT_URL) or a shared directory. Then every
`put_file` also publishes the file there (S3: one PUT of the complete object, which S3 makes
visible whole or not at all; a directory: temp file + rename), the checksum sidecar after it, so a
reader that finds the sidecar finds the whole file. Model loaders need local paths (torch,
onnxruntime): `local_copy` downloads a published artifact into ARTIFACT_CACHE_DIR under its
checksum (`<sha256>/<name>`), verifies it and reuses it while the checksum matches.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHECKSUM_SUFFIX = ".sha256"
CHUNK = 1 << 20


class ArtifactCorruptedError(RuntimeError):
    """An artifact whose bytes do not match its recorded sha256 (or that has no checksum at all)."""

    def __init__(self, where: str, expected: str | None, actual: str | None) -> None:
        self.where, self.expected, self.actual = where, expected, actual
        super().__init__(
            f"artifact {where} is corrupted: recorded sha256 {expected or '(none)'}, "
            f"its bytes hash to {actual or '(missing)'}; refusing to use it"
        )


@dataclass(frozen=True)
class StoredArtifact:
    path: Path  # the local working copy
    sha256: str
    size_bytes: int
    remote_uri: str | None = None  # where shared storage holds it (None: local store only)


class ArtifactStore:
    def __init__(
        self,
        root: Path,
        remote: str | None = None,
        cache_dir: Path | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.remote = remote.rstrip("/") if remote else None
        self.cache_dir = Path(cache_dir) if cache_dir else self.root.parent / "artifact-cache"
        self._fs: Any = None
        self._storage_options = storage_options or {}
        if self.remote is not None:
            import fsspec

            protocol = self.remote.split("://", 1)[0] if "://" in self.remote else "file"
            self._fs = fsspec.filesystem(protocol, **self._storage_options)
            self._is_local_fs = protocol == "file"
            if self._is_local_fs:
                Path(self._remote_path_of("")).mkdir(parents=True, exist_ok=True)

    # ---- the local working tree (what callers write into and load from)

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
        """Copy `source` into the store atomically (checksum recorded, published) and return its path."""
        return self.put(source, namespace, key, filename).path

    def put(self, source: Path, namespace: str, key: str, filename: str) -> StoredArtifact:
        destination = self.directory(namespace, key) / _safe(filename)
        with self.atomic_path(destination) as tmp:
            digest, size = _copy_hashing(source, tmp)
        _write_atomic_text(_sidecar(destination), digest)
        remote_uri = self._publish(destination, f"{namespace}/{key}/{filename}", digest)
        return StoredArtifact(destination, digest, size, remote_uri)

    def remove(self, namespace: str, key: str) -> None:
        shutil.rmtree(self.root / _safe(namespace) / _safe(key), ignore_errors=True)
        if self._fs is not None:
            target = self._remote_path_of(f"{_safe(namespace)}/{_safe(key)}")
            try:
                self._fs.rm(target, recursive=True)
            except FileNotFoundError:
                pass

    # ---- reading with verification

    def recorded_checksum(self, path: Path) -> str | None:
        sidecar = _sidecar(path)
        return sidecar.read_text().strip() if sidecar.exists() else None

    def verify(self, path: Path) -> str:
        """The file's sha256, checked against the recorded one; ArtifactCorruptedError if they differ."""
        expected = self.recorded_checksum(path)
        actual = sha256_file(path) if path.exists() else None
        if expected is None or actual != expected:
            raise ArtifactCorruptedError(str(path), expected, actual)
        return actual

    def local_copy(self, namespace: str, key: str, filename: str) -> Path:
        """A verified local path of an artifact: the working copy, else a download from shared storage.

        Downloads land in ARTIFACT_CACHE_DIR/<sha256>/<filename> (temp + rename), are hashed while
        written and reused by later calls as long as the recorded checksum is the same.
        """
        local = self.root / _safe(namespace) / _safe(key) / _safe(filename)
        if local.exists():
            self.verify(local)
            return local
        if self._fs is None:
            raise FileNotFoundError(f"artifact {namespace}/{key}/{filename} is not in the store")
        relative = f"{namespace}/{key}/{filename}"
        remote_file = self._remote_path_of(relative)
        try:
            with self._fs.open(remote_file + CHECKSUM_SUFFIX, "rb") as f:
                expected = f.read().decode().strip()
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {relative} is not in {self.remote}") from None
        cached = self.cache_dir / expected / _safe(filename)
        if cached.exists():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        with self.atomic_path(cached) as tmp:
            digest = hashlib.sha256()
            with self._fs.open(remote_file, "rb") as src, open(tmp, "wb") as dst:
                while block := src.read(CHUNK):
                    digest.update(block)
                    dst.write(block)
            if digest.hexdigest() != expected:
                raise ArtifactCorruptedError(f"{self.remote}/{relative}", expected, digest.hexdigest())
        return cached

    # ---- shared storage

    def _remote_path_of(self, relative: str) -> str:
        assert self.remote is not None
        base = self.remote.split("://", 1)[1] if "://" in self.remote else self.remote
        return f"{base}/{relative}" if relative else base

    def _publish(self, local: Path, relative: str, digest: str) -> str | None:
        if self._fs is None:
            return None
        target = self._remote_path_of(relative)
        if self._is_local_fs:
            # A shared directory: temp file + rename, the same atomicity as the local tree.
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex}"
            try:
                shutil.copyfile(local, tmp)
                os.replace(tmp, target)
            finally:
                Path(tmp).unlink(missing_ok=True)
            _write_atomic_text(Path(target + CHECKSUM_SUFFIX), digest)
        else:
            # S3: one PUT (or a multipart upload completed in one request) of the whole object; the
            # object appears complete or not at all. The checksum goes in its metadata and a
            # sidecar written after it, so a reader that sees the sidecar sees the whole file.
            self._fs.put_file(str(local), target)
            self._fs.pipe_file(target + CHECKSUM_SUFFIX, digest.encode())
        return f"{self.remote}/{relative}"


def new_id() -> str:
    return uuid.uuid4().hex


def sha256_file(path: Path, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def store_from_settings(settings: Any) -> ArtifactStore:
    """The store ARTIFACT_STORE names: a local directory (default DATA_DIR/artifacts) or shared storage."""
    target: str | None = settings.artifact_store
    if not target:
        return ArtifactStore(settings.artifacts_dir, cache_dir=settings.artifact_cache_path)
    if "://" not in target or target.startswith("file://"):
        # A (shared) directory as the store: the working tree is the shared directory itself.
        return ArtifactStore(Path(target.removeprefix("file://")), cache_dir=settings.artifact_cache_path)
    options: dict[str, Any] = {}
    if settings.s3_endpoint_url and target.startswith("s3://"):
        options["endpoint_url"] = settings.s3_endpoint_url
    return ArtifactStore(
        settings.artifacts_dir, remote=target, cache_dir=settings.artifact_cache_path, storage_options=options
    )


def _copy_hashing(source: Path, destination: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(destination, "wb") as dst:
        while block := src.read(CHUNK):
            digest.update(block)
            dst.write(block)
            size += len(block)
    return digest.hexdigest(), size


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _write_atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _safe(part: str) -> str:
    if not part or "/" in part or "\\" in part or part in {".", ".."} or "\x00" in part:
        raise ValueError(f"unsafe path component: {part!r}")
    return part
