"""The storage side of resumable (tus 1.0) uploads: header parsing, the bytes on disk, expiry.

Each upload's bytes live in DATA_DIR/uploads/resumable/<id><extension>. The database row's `offset` is
the truth: bytes past it (a write that was never acknowledged, a chunk whose checksum failed, a crash
between the write and the commit) are cut off before the next write, and a file shorter than the row
(lost on a machine crash) brings the row down to it. A PATCH holds an exclusive `flock` on the file,
so two requests (or two workers sharing DATA_DIR) never write the same upload at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from api.errors import ApiError
from state.registry import ModelRecord
from state.settings import Settings
from state.uploads import ResumableUpload
from state.users import utcnow

log = logging.getLogger("robopt.uploads")

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation", "termination", "checksum", "expiration")
# sha1 because the checksum extension says a server MUST support it (tuspy's default); sha256 as asked.
CHECKSUM_ALGORITHMS: dict[str, Any] = {
    "sha256": hashlib.sha256,
    "sha1": hashlib.sha1,
}
MAX_METADATA_BYTES = 4096
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"
ORPHAN_GRACE_S = 5.0
# For CORS: what a browser tus client sends and must be allowed to read.
TUS_REQUEST_HEADERS = (
    "Tus-Resumable",
    "Upload-Length",
    "Upload-Offset",
    "Upload-Metadata",
    "Upload-Checksum",
)
TUS_RESPONSE_HEADERS = (
    "Location",
    "Upload-Offset",
    "Upload-Length",
    "Upload-Metadata",
    "Upload-Expires",
    "Tus-Resumable",
    "Tus-Version",
    "Tus-Extension",
    "Tus-Max-Size",
    "Tus-Checksum-Algorithm",
)


def aware(value: datetime) -> datetime:
    # SQLite reads timezone-aware columns back naive (they were written in UTC).
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def expiry_from_now(settings: Settings) -> datetime:
    return utcnow() + timedelta(hours=settings.upload_expiry_h)


def is_expired(upload: ResumableUpload) -> bool:
    return aware(upload.expires_at) <= utcnow()


def parse_metadata(raw: str | None) -> dict[str, str]:
    """`Upload-Metadata: key base64,key2 base64` -> {key: decoded text}; a key may have no value."""
    if raw is None or not raw.strip():
        return {}
    if len(raw.encode()) > MAX_METADATA_BYTES:
        raise ApiError(400, "bad_request", "Upload-Metadata is too long", {"max_bytes": MAX_METADATA_BYTES})
    out: dict[str, str] = {}
    for pair in raw.split(","):
        parts = pair.strip().split(" ")
        if not parts[0] or len(parts) > 2:
            raise ApiError(
                400, "bad_request", "Malformed Upload-Metadata", "expected 'key base64value' pairs"
            )
        key = parts[0]
        if key in out:
            raise ApiError(400, "bad_request", "Malformed Upload-Metadata", f"key '{key}' appears twice")
        try:
            out[key] = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) == 2 else ""
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(
                400, "bad_request", "Malformed Upload-Metadata", f"the value of '{key}' is not base64 UTF-8"
            ) from exc
    return out


def encode_metadata(values: dict[str, str]) -> str:
    return ",".join(
        f"{k} {base64.b64encode(v.encode()).decode('ascii')}" if v else k for k, v in values.items()
    )


def parse_checksum(raw: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: sha256 <base64 digest>` -> (algorithm, digest); None without the header."""
    if raw is None:
        return None
    parts = raw.strip().split(" ")
    if len(parts) != 2:
        raise ApiError(400, "bad_request", "Malformed Upload-Checksum", "expected '<algorithm> <base64>'")
    algorithm = parts[0].lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ApiError(
            400,
            "unsupported_checksum",
            f"Checksum algorithm '{algorithm}' is not supported",
            {"supported": list(CHECKSUM_ALGORITHMS)},
        )
    try:
        digest = base64.b64decode(parts[1], validate=True)
    except binascii.Error as exc:
        raise ApiError(400, "bad_request", "Malformed Upload-Checksum", "the digest is not base64") from exc
    return algorithm, digest


def parse_length(raw: str | None, header: str) -> int:
    if raw is None:
        raise ApiError(400, "bad_request", f"{header} is required")
    if not raw.strip().isdigit():
        raise ApiError(400, "bad_request", f"{header} must be a non-negative integer", f"got {raw[:40]!r}")
    return int(raw.strip())


def upload_path(settings: Settings, upload: ResumableUpload, extension: str) -> Path:
    return settings.resumable_uploads_dir / f"{upload.id}{extension}"


def upload_id_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


def create_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


@contextmanager
def locked_file(path: Path) -> Iterator[int]:
    """The upload's file open for writing under an exclusive lock; 423 when another request holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError as exc:  # its directory is gone: the upload was removed meanwhile
        raise ApiError(404, "not_found", "Upload not found") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise ApiError(
                423, "locked", "Another request is writing to this upload", "retry after it finishes"
            ) from exc
        yield fd
    finally:
        os.close(fd)  # releases the lock


def write_block(fd: int, block: bytes, position: int, digest: object | None) -> None:
    view = memoryview(block)
    while view:
        written = os.pwrite(fd, view, position)
        position += written
        view = view[written:]
    if digest is not None:
        digest.update(block)  # type: ignore[attr-defined]


async def storage_used(db: AsyncSession, owner_id: str) -> int:
    """Bytes the user holds: their models' sizes plus the declared lengths of their uploads."""
    models = (
        await db.exec(
            select(func.coalesce(func.sum(ModelRecord.size_bytes), 0)).where(ModelRecord.owner_id == owner_id)
        )
    ).one()
    uploads = (
        await db.exec(
            select(func.coalesce(func.sum(ResumableUpload.length), 0)).where(
                ResumableUpload.owner_id == owner_id
            )
        )
    ).one()
    return int(models) + int(uploads)


def remove_files(settings: Settings, upload_id: str) -> None:
    for path in settings.resumable_uploads_dir.glob(f"{upload_id}*"):
        if upload_id_of(path) == upload_id:
            path.unlink(missing_ok=True)


async def remove_upload(db: AsyncSession, settings: Settings, upload: ResumableUpload) -> None:
    await db.exec(delete(ResumableUpload).where(ResumableUpload.id == upload.id))  # type: ignore[call-overload]
    await db.commit()
    await asyncio.to_thread(remove_files, settings, upload.id)


async def remove_expired_uploads(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> int:
    """Delete expired uploads (row and file) and files no row refers to; returns how many uploads."""
    async with sessionmaker() as db:
        expired = (
            await db.exec(select(ResumableUpload.id).where(ResumableUpload.expires_at <= utcnow()))
        ).all()
        if expired:
            await db.exec(delete(ResumableUpload).where(ResumableUpload.id.in_(expired)))  # type: ignore[call-overload,attr-defined]
            await db.commit()
        known = set((await db.exec(select(ResumableUpload.id))).all())
    listed_at = utcnow().timestamp()

    def sweep() -> None:
        root = settings.resumable_uploads_dir
        if not root.is_dir():
            return
        for upload_id in expired:
            remove_files(settings, upload_id)
        for path in root.iterdir():
            # A file is created only after its row is committed: one older than the listing whose id
            # the listing lacks belongs to no upload.
            try:
                if upload_id_of(path) not in known and path.stat().st_mtime < listed_at - ORPHAN_GRACE_S:
                    path.unlink(missing_ok=True)
            except OSError:
                pass

    await asyncio.to_thread(sweep)
    if expired:
        log.info("removed %d expired resumable upload(s)", len(expired))
    return len(expired)


async def cleanup_loop(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
    """Started in the app's lifespan: sweep at start-up, then every UPLOAD_CLEANUP_INTERVAL_S."""
    while True:
        try:
            await remove_expired_uploads(sessionmaker, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a failed sweep must not end the loop; the next one retries
            log.exception("resumable upload cleanup failed")
        await asyncio.sleep(settings.upload_cleanup_interval_s)


def http_date(value: datetime) -> str:
    from email.utils import format_datetime

    return format_datetime(aware(value).astimezone(UTC), usegmt=True)
