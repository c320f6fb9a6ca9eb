"""Resumable uploads: the tus 1.0 protocol (core, creation, termination, checksum, expiration).

    OPTIONS /uploads             capabilities (Tus-Version, Tus-Extension, Tus-Max-Size, ...)
    POST    /uploads             create: Upload-Length, Upload-Metadata (`filename` required) -> 201
    HEAD    /uploads/{id}        Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires
    PATCH   /uploads/{id}        append bytes at Upload-Offset (application/offset+octet-stream)
    DELETE  /uploads/{id}        terminate

Authenticated and owner-scoped like every endpoint (another user's upload is 404, for administrators
too: an upload in progress is private until it becomes a model). A finished upload becomes a model
through `POST /models/from-upload`. The body of a PATCH streams to disk in blocks written off the event
loop; without a checksum the offset is committed after each block, so a dropped connection resumes
at the bytes on disk; with `Upload-Checksum` the chunk counts only once its digest matches (460 and
the chunk discarded otherwise).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import update
from starlette.requests import ClientDisconnect

from api.deps import CurrentUser, DbDep, SettingsDep
from api.errors import ApiError, error_responses
from api.log import security_event
from api.model_files import MODEL_EXTENSIONS
from api.resumable import (
    CHECKSUM_ALGORITHMS,
    OFFSET_CONTENT_TYPE,
    TUS_EXTENSIONS,
    TUS_VERSION,
    create_file,
    encode_metadata,
    expiry_from_now,
    http_date,
    is_expired,
    locked_file,
    parse_checksum,
    parse_length,
    parse_metadata,
    remove_upload,
    storage_used,
    upload_path,
    write_block,
)
from api.uploads import extension_of, safe_filename
from state.settings import Settings
from state.uploads import ResumableUpload
from state.users import User, utcnow

log = logging.getLogger("robopt.uploads")

WRITE_BLOCK = 4 << 20  # bytes gathered before one write (and, without a checksum, one offset commit)
TUS_HEADERS = {"Tus-Resumable": TUS_VERSION}


class TusRoute(APIRoute):
    """Every response of these routes, errors included, carries `Tus-Resumable` (the protocol's rule)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def tus_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except ApiError as err:
                err.headers = {**(err.headers or {}), **TUS_HEADERS}
                raise
            response.headers.update(TUS_HEADERS)
            return response

        return tus_handler


def require_tus_resumable(request: Request) -> None:
    if request.method == "OPTIONS":
        return
    given = request.headers.get("tus-resumable")
    if given != TUS_VERSION:
        raise ApiError(
            412,
            "unsupported_tus_version",
            "This server speaks tus 1.0.0: send 'Tus-Resumable: 1.0.0'",
            {"received": given},
            headers={"Tus-Version": TUS_VERSION},
        )


router = APIRouter(
    prefix="/uploads",
    tags=["uploads"],
    route_class=TusRoute,
    dependencies=[Depends(require_tus_resumable)],
)


def _capabilities(settings: Settings) -> dict[str, str]:
    return {
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(TUS_EXTENSIONS),
        "Tus-Max-Size": str(settings.max_resumable_upload_bytes),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


async def get_owned_upload(db: DbDep, upload_id: str, user: User, settings: Settings) -> ResumableUpload:
    """The caller's upload; 404 for a missing or foreign one, 410 (and removed) for an expired one."""
    upload = await db.get(ResumableUpload, upload_id)
    if upload is None or upload.owner_id != user.id:
        raise ApiError(404, "not_found", "Upload not found")
    if is_expired(upload):
        await remove_upload(db, settings, upload)
        raise ApiError(
            410, "gone", "Upload expired and was removed", {"expired_at": http_date(upload.expires_at)}
        )
    return upload


def _state_headers(upload: ResumableUpload) -> dict[str, str]:
    headers = {
        "Upload-Offset": str(upload.offset),
        "Upload-Length": str(upload.length),
        "Cache-Control": "no-store",
    }
    if upload.upload_metadata:
        headers["Upload-Metadata"] = encode_metadata(upload.upload_metadata)
    if upload.completed_at is None:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return headers


@router.options("", status_code=204, summary="tus capabilities", responses=error_responses(401))
async def capabilities(user: CurrentUser, settings: SettingsDep) -> Response:
    return Response(status_code=204, headers=_capabilities(settings))


@router.post(
    "",
    status_code=201,
    summary="Create a resumable upload",
    description="Headers: `Tus-Resumable: 1.0.0`, `Upload-Length` (bytes), `Upload-Metadata` with "
    "`filename` (its extension must be one a model upload accepts). Answers 201 with `Location`.",
    responses=error_responses(400, 401, 412, 413),
)
async def create_upload(request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep) -> Response:
    if request.headers.get("upload-defer-length") is not None:
        raise ApiError(400, "bad_request", "Upload-Defer-Length is not supported: send Upload-Length")
    length = parse_length(request.headers.get("upload-length"), "Upload-Length")
    if length > settings.max_resumable_upload_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            "Upload exceeds the size limit for resumable uploads",
            {"max_bytes": settings.max_resumable_upload_bytes, "declared_bytes": length},
            headers={"Tus-Max-Size": str(settings.max_resumable_upload_bytes)},
        )
    if (request.headers.get("content-length") or "0") not in ("", "0"):
        raise ApiError(400, "bad_request", "Creation with upload is not supported: send the bytes by PATCH")
    metadata = parse_metadata(request.headers.get("upload-metadata"))
    raw_name = metadata.get("filename")
    if not raw_name:
        raise ApiError(
            400, "bad_request", "Upload-Metadata must carry 'filename'", "its extension says the model format"
        )
    filename = safe_filename(raw_name)
    extension = extension_of(filename)
    if extension not in MODEL_EXTENSIONS:
        raise ApiError(
            400,
            "unsupported_format",
            f"File extension '{extension or '(none)'}' is not accepted",
            {"allowed_extensions": list(MODEL_EXTENSIONS)},
        )
    used = await storage_used(db, user.id)
    if used + length > settings.user_storage_quota_bytes:
        security_event("storage_quota_exceeded", user_id=user.id, used=used, declared=length)
        raise ApiError(
            413,
            "quota_exceeded",
            "This upload would exceed your storage quota",
            {"quota_bytes": settings.user_storage_quota_bytes, "used_bytes": used, "declared_bytes": length},
        )
    upload = ResumableUpload(
        owner_id=user.id,
        length=length,
        upload_metadata=metadata,
        filename=filename,
        expires_at=expiry_from_now(settings),
        completed_at=utcnow() if length == 0 else None,
    )
    db.add(upload)
    await db.commit()
    await db.refresh(upload)
    await asyncio.to_thread(create_file, upload_path(settings, upload, extension))
    log.info("resumable upload %s created by %s: %d bytes, %s", upload.id, user.id, length, filename)
    headers = {"Location": str(request.url_for("upload_offset", upload_id=upload.id))}
    if upload.completed_at is None:
        headers["Upload-Expires"] = http_date(upload.expires_at)
    return Response(status_code=201, headers=headers)


@router.head(
    "/{upload_id}",
    name="upload_offset",
    status_code=200,
    summary="Offset of a resumable upload",
    responses=error_responses(401, 404, 412),
)
async def upload_offset(upload_id: str, user: CurrentUser, db: DbDep, settings: SettingsDep) -> Response:
    upload = await get_owned_upload(db, upload_id, user, settings)
    path = upload_path(settings, upload, extension_of(upload.filename))
    size = await asyncio.to_thread(lambda: path.stat().st_size if path.exists() else 0)
    if size < upload.offset:  # bytes the row counts were lost (a machine crash before they reached disk)
        upload.offset = size
        upload.completed_at = None
        db.add(upload)
        await db.commit()
    return Response(status_code=200, headers=_state_headers(upload))


async def _commit_offset(db: DbDep, upload: ResumableUpload, old: int, new: int, settings: Settings) -> None:
    """Move the row from `old` to `new` bytes; 404 when the upload was terminated meanwhile."""
    complete = new == upload.length
    values: dict[str, Any] = {"offset": new, "expires_at": expiry_from_now(settings)}
    if complete:
        values["completed_at"] = utcnow()
    result = await db.exec(  # type: ignore[call-overload]
        update(ResumableUpload)
        .where(ResumableUpload.id == upload.id, ResumableUpload.offset == old)  # type: ignore[arg-type]
        .values(**values)
    )
    await db.commit()
    if result.rowcount != 1:
        raise ApiError(404, "not_found", "Upload not found", "it was terminated during this request")


@router.patch(
    "/{upload_id}",
    status_code=204,
    summary="Append bytes to a resumable upload",
    description="Body: `application/offset+octet-stream`; `Upload-Offset` must equal the current offset "
    "(409 otherwise). Optional `Upload-Checksum: sha256 <base64>` (or sha1) of this chunk: on a mismatch "
    "the chunk is discarded (460).",
    responses=error_responses(400, 401, 404, 409, 412, 413, 415),
)
async def append_bytes(
    upload_id: str, request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep
) -> Response:
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if content_type != OFFSET_CONTENT_TYPE:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"PATCH bodies must be '{OFFSET_CONTENT_TYPE}'",
            {"received": content_type or None},
        )
    client_offset = parse_length(request.headers.get("upload-offset"), "Upload-Offset")
    checksum = parse_checksum(request.headers.get("upload-checksum"))
    upload = await get_owned_upload(db, upload_id, user, settings)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and client_offset + int(declared) > upload.length:
        raise ApiError(
            413,
            "payload_too_large",
            "The chunk goes past the upload's Upload-Length",
            {"upload_length": upload.length, "offset": client_offset, "chunk_bytes": int(declared)},
        )
    path = upload_path(settings, upload, extension_of(upload.filename))
    with locked_file(path) as fd:
        start = await _reconcile(db, upload, fd)
        if client_offset != start:
            raise ApiError(
                409, "offset_mismatch", "Upload-Offset does not match the upload's offset", {"offset": start}
            )
        offset = await _receive(request, db, upload, fd, start, checksum, settings)
    return Response(
        status_code=204, headers={"Upload-Offset": str(offset), **_expires(upload, offset, settings)}
    )


def _expires(upload: ResumableUpload, offset: int, settings: Settings) -> dict[str, str]:
    if offset == upload.length:
        return {}
    return {"Upload-Expires": http_date(expiry_from_now(settings))}


async def _reconcile(db: DbDep, upload: ResumableUpload, fd: int) -> int:
    """Bring the file and the row to the same offset (under the lock) and return it."""
    size = await asyncio.to_thread(lambda: os.fstat(fd).st_size)
    if size > upload.offset:
        await asyncio.to_thread(os.ftruncate, fd, upload.offset)  # bytes never acknowledged
    elif size < upload.offset:
        upload.offset = size
        upload.completed_at = None
        db.add(upload)
        await db.commit()
    return upload.offset


async def _receive(
    request: Request,
    db: DbDep,
    upload: ResumableUpload,
    fd: int,
    start: int,
    checksum: tuple[str, bytes] | None,
    settings: Settings,
) -> int:
    """Stream the body to the file at `start`; return the committed offset."""
    digest = CHECKSUM_ALGORITHMS[checksum[0]]() if checksum else None  # type: ignore[operator]
    pending = bytearray()
    written = start  # bytes on disk
    committed = start  # bytes the row acknowledges

    async def flush() -> None:
        nonlocal written, committed
        if pending:
            block = bytes(pending)
            pending.clear()
            await asyncio.to_thread(write_block, fd, block, written, digest)
            written += len(block)
        if digest is None and written != committed:
            await _commit_offset(db, upload, committed, written, settings)
            committed = written

    try:
        try:
            async for chunk in request.stream():
                if not chunk:
                    continue
                if written + len(pending) + len(chunk) > upload.length:
                    raise ApiError(
                        413,
                        "payload_too_large",
                        "The chunk goes past the upload's Upload-Length",
                        {"upload_length": upload.length, "offset": start},
                    )
                pending.extend(chunk)
                if len(pending) >= WRITE_BLOCK:
                    await flush()
        except ClientDisconnect:
            if digest is None:
                await flush()  # keep what arrived: the client resumes from there
            log.info("upload %s: client disconnected at offset %d", upload.id, written + len(pending))
            raise ApiError(400, "client_disconnected", "The client disconnected during the PATCH") from None
        if digest is not None:
            await flush()
            if digest.digest() != checksum[1]:  # type: ignore[attr-defined,index]
                raise ApiError(
                    460,
                    "checksum_mismatch",
                    f"The chunk's {checksum[0]} does not match Upload-Checksum; it was discarded",  # type: ignore[index]
                    {"offset": start},
                )
            await _commit_offset(db, upload, start, written, settings)
            committed = written
        else:
            await flush()
    finally:
        if committed != written or pending:
            await asyncio.to_thread(os.ftruncate, fd, committed)  # nothing unacknowledged stays
    if committed == upload.length:
        log.info("resumable upload %s complete: %d bytes", upload.id, committed)
    return committed


@router.delete(
    "/{upload_id}",
    status_code=204,
    summary="Terminate a resumable upload (its bytes are removed)",
    responses=error_responses(401, 404, 412),
)
async def terminate_upload(upload_id: str, user: CurrentUser, db: DbDep, settings: SettingsDep) -> Response:
    upload = await get_owned_upload(db, upload_id, user, settings)
    await remove_upload(db, settings, upload)
    log.info("resumable upload %s terminated by %s", upload.id, user.id)
    return Response(status_code=204)
