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

A directory (a transformers model) is published file by file with a manifest beside it
(`<name>.manifest.json`: relative path -> sha256, itself checksummed and written last); its download
lands in ARTIFACT_CACHE_DIR/<manifest sha256>/<name>/, renamed into place once every file checked.

Every read of a stored artifact goes through `resolve(path, namespace, key)`: the registry keeps the
path its writer had (`<root>/<namespace>/<key>/<name>[/<file>]`), which names the artifact wherever
the reader's own root is. `resolve` gives the verified working copy when this machine has it, else
the verified download from shared storage; a path outside the store (an imported model) is its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 1 << 20

log = logging.getLogger("robopt.artifacts")


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
        self._root_abs = self.root.resolve()
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

    def publish(self, path: Path, namespace: str, key: str, filename: str) -> StoredArtifact:
        """Record and publish a file already in its place in the working tree (moved there atomically,
        e.g. an upload renamed into the store): its checksum sidecar, then shared storage."""
        if path != self.root / _safe(namespace) / _safe(key) / _safe(filename):
            raise ValueError(f"{path} is not {namespace}/{key}/{filename} of the store at {self.root}")
        digest = sha256_file(path)
        _write_atomic_text(_sidecar(path), digest)
        remote_uri = self._publish(path, f"{namespace}/{key}/{filename}", digest)
        return StoredArtifact(path, digest, path.stat().st_size, remote_uri)

    def publish_tree(self, directory: Path, namespace: str, key: str, name: str) -> str:
        """Record and publish a directory already in place (`<namespace>/<key>/<name>/`): every file,
        then its manifest (relative path -> sha256) and the manifest's checksum. Returns the manifest's
        sha256."""
        if directory != self.root / _safe(namespace) / _safe(key) / _safe(name):
            raise ValueError(f"{directory} is not {namespace}/{key}/{name} of the store at {self.root}")
        files: dict[str, str] = {}
        for file in sorted(p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()):
            relative = file.relative_to(directory).as_posix()
            files[relative] = digest = sha256_file(file)
            self._publish(file, f"{namespace}/{key}/{name}/{relative}", digest, sidecar=False)
        manifest = directory.with_name(name + MANIFEST_SUFFIX)
        _write_atomic_text(manifest, json.dumps({"files": files}, indent=0, sort_keys=True))
        digest = sha256_file(manifest)
        _write_atomic_text(_sidecar(manifest), digest)
        self._publish(manifest, f"{namespace}/{key}/{name}{MANIFEST_SUFFIX}", digest)
        return digest

    def resolve(self, stored: str | Path, namespace: str | None = None, key: str | None = None) -> Path:
        """A verified local path of a stored artifact (file or directory), named by the path its writer
        recorded: this machine's working copy, else a verified download from shared storage.

        The path is read relative to this store's root; a path recorded under another root (another
        machine's DATA_DIR) is read from its `<namespace>/<key>/` components on. A path outside the
        store (an imported model's own files) is returned as it is. FileNotFoundError when nowhere;
        ArtifactCorruptedError when the bytes found do not match the recorded checksum.
        """
        path = Path(stored)
        parts = self._ref(path, namespace, key)
        if parts is None:
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
            return path
        ns, k, name, inner = parts[0], parts[1], parts[2], parts[3:]
        local = self.root / ns / k / name
        if local.exists():
            found = self._verified_local(local)
        elif self._fs is None:
            raise FileNotFoundError(f"artifact {'/'.join(parts)} is not in the store at {self.root}")
        else:
            # Another machine may have written it since fsspec listed the folder here.
            self._fs.invalidate_cache(self._remote_path_of(f"{ns}/{k}"))
            if self._remote_exists(f"{ns}/{k}/{name}{MANIFEST_SUFFIX}"):
                found = self._local_tree(ns, k, name)
            else:
                found = self.local_copy(ns, k, name)
        result = found.joinpath(*inner)
        if inner and not result.exists():
            raise FileNotFoundError(f"artifact {'/'.join(parts)} is not in the store")
        return result

    def _ref(self, path: Path, namespace: str | None, key: str | None) -> list[str] | None:
        """`[namespace, key, name, *inside]` of a stored path, or None for a path outside the store."""
        try:
            parts = list(path.relative_to(self._root_abs).parts) if path.is_absolute() else list(path.parts)
        except ValueError:
            parts = []
            if namespace is not None and key is not None:
                for i in range(len(path.parts) - 2, -1, -1):
                    if path.parts[i : i + 2] == (namespace, key):
                        parts = list(path.parts[i:])
                        break
        if len(parts) < 3:
            return None
        for part in parts:
            _safe(part)
        return parts

    def _verified_local(self, local: Path) -> Path:
        if local.is_dir():
            manifest = local.with_name(local.name + MANIFEST_SUFFIX)
            if manifest.exists():
                self.verify(manifest)
                for relative, expected in json.loads(manifest.read_text())["files"].items():
                    file = local / relative
                    actual = sha256_file(file) if file.is_file() else None
                    if actual != expected:
                        raise ArtifactCorruptedError(str(file), expected, actual)
            return local
        if self.recorded_checksum(local) is None:
            # Written into the working tree before uploads had their checksum recorded (an older row).
            log.debug("artifact %s has no recorded checksum (an older local artifact)", local)
            return local
        self.verify(local)
        return local

    def _remote_exists(self, relative: str) -> bool:
        return bool(self._fs.exists(self._remote_path_of(relative) + CHECKSUM_SUFFIX))

    def _local_tree(self, namespace: str, key: str, name: str) -> Path:
        """Download a published directory into ARTIFACT_CACHE_DIR/<manifest sha256>/<name>/, verified."""
        relative = f"{namespace}/{key}/{name}"
        manifest_bytes, expected = self._read_remote_verified(relative + MANIFEST_SUFFIX)
        cached = self.cache_dir / expected / _safe(name)
        if cached.is_dir():
            return cached
        files: dict[str, str] = json.loads(manifest_bytes)["files"]
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
        try:
            for inner, digest in files.items():
                target = tmp.joinpath(*[_safe(p) for p in inner.split("/")])
                target.parent.mkdir(parents=True, exist_ok=True)
                self._download(f"{relative}/{inner}", target, digest)
            os.replace(tmp, cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached

    def _read_remote_verified(self, relative: str) -> tuple[bytes, str]:
        remote_file = self._remote_path_of(relative)
        try:
            with self._fs.open(remote_file + CHECKSUM_SUFFIX, "rb") as f:
                expected = f.read().decode().strip()
            with self._fs.open(remote_file, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"artifact {relative} is not in {self.remote}") from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ArtifactCorruptedError(f"{self.remote}/{relative}", expected, actual)
        return data, expected

    def _download(self, relative: str, target: Path, expected: str) -> None:
        digest = hashlib.sha256()
        with self._fs.open(self._remote_path_of(relative), "rb") as src, open(target, "wb") as dst:
            while block := src.read(CHUNK):
                digest.update(block)
                dst.write(block)
        if digest.hexdigest() != expected:
            raise ArtifactCorruptedError(f"{self.remote}/{relative}", expected, digest.hexdigest())

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
            self._download(relative, tmp, expected)
        return cached

    # ---- shared storage

    def _remote_path_of(self, relative: str) -> str:
        assert self.remote is not None
        base = self.remote.split("://", 1)[1] if "://" in self.remote else self.remote
        return f"{base}/{relative}" if relative else base

    def _publish(self, local: Path, relative: str, digest: str, sidecar: bool = True) -> str | None:
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
            if sidecar:
                _write_atomic_text(Path(target + CHECKSUM_SUFFIX), digest)
        else:
            # S3: one PUT (or a multipart upload completed in one request) of the whole object; the
            # object appears complete or not at all. The checksum goes in its metadata and a
            # sidecar written after it, so a reader that sees the sidecar sees the whole file.
            self._fs.put_file(str(local), target)
            if sidecar:
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
