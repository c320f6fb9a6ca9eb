"""Streaming multipart uploads: the body goes to disk chunk by chunk, hashed on the way, size-capped.

Starlette's `request.form()` would spool the whole body (to memory, then /tmp) before a route sees
it, and enforce no limit. Here python-multipart's push parser is fed straight from
`request.stream()`: file bytes are written to a private temporary file in DATA_DIR/uploads, the
SHA-256 is updated as they arrive, and the limit is checked against the bytes actually received,
whatever Content-Length claims. Past the limit, or on any error or disconnect, the temporary file is
removed before the error is answered.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from api.errors import ApiError
from tools.archives import archive_extension

log = logging.getLogger("robopt.uploads")

FLUSH_BYTES = 1 << 20  # write and hash in 1 MiB blocks, off the event loop
MAX_FIELD_BYTES = 64 * 1024  # name, description, architecture JSON
FIELDS_ALLOWANCE = 1 << 20  # room for the form fields and multipart framing beyond the file itself
MAX_FIELDS = 16


@dataclass
class ReceivedUpload:
    path: Path
    filename: str
    extension: str
    size: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def safe_filename(raw: str) -> str:
    """The client's file name reduced to a harmless base name (it is metadata, never a path)."""
    base = raw.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c for c in base if c.isprintable() and c not in '<>:"|?*').strip().strip(".")
    return cleaned[:255] or "upload"


def extension_of(filename: str) -> str:
    """The file's extension, lower case; `.tar.gz` counts as one (a model directory's archive)."""
    return archive_extension(filename) or Path(filename).suffix.lower()


class _PartCollector:
    """Callback target of the push parser; turns its events into file bytes and field values."""

    def __init__(self, file_field: str, allowed_extensions: tuple[str, ...]) -> None:
        self.file_field = file_field
        self.allowed_extensions = allowed_extensions
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.part_name: str | None = None
        self.part_is_file = False
        self.field_value = bytearray()
        self.fields: dict[str, str] = {}
        self.pending = bytearray()  # file bytes not yet flushed to disk
        self.file_size = 0
        self.filename: str | None = None
        self.file_done = False
        self.ended = False
        self.error: ApiError | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": lambda d, s, e: self.header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self.header_value.extend(d[s:e]),
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def fail(self, error: ApiError) -> None:
        if self.error is None:
            self.error = error

    def on_part_begin(self) -> None:
        self.headers = {}
        self.part_name = None
        self.part_is_file = False
        self.field_value = bytearray()

    def on_header_end(self) -> None:
        self.headers[bytes(self.header_field).lower().decode("latin-1")] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self.headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            self.fail(ApiError(400, "bad_request", "Malformed multipart part: no form-data name"))
            return
        self.part_name = options[b"name"].decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        if raw_filename is None:
            if len(self.fields) >= MAX_FIELDS:
                self.fail(ApiError(400, "bad_request", f"Too many form fields (at most {MAX_FIELDS})"))
            return
        if self.part_name != self.file_field:
            self.fail(
                ApiError(
                    400,
                    "bad_request",
                    f"Unexpected file in field '{self.part_name}'",
                    f"send the file in the field '{self.file_field}'",
                )
            )
            return
        if self.filename is not None:
            self.fail(ApiError(400, "bad_request", "Only one file per upload"))
            return
        filename = safe_filename(raw_filename.decode("utf-8", "replace"))
        extension = extension_of(filename)
        if extension not in self.allowed_extensions:
            self.fail(
                ApiError(
                    400,
                    "unsupported_format",
                    f"File extension '{extension or '(none)'}' is not accepted",
                    {"allowed_extensions": list(self.allowed_extensions)},
                )
            )
            return
        self.filename = filename
        self.part_is_file = True

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        if self.part_is_file:
            self.pending.extend(data[start:end])
            self.file_size += end - start
        else:
            self.field_value.extend(data[start:end])
            if len(self.field_value) > MAX_FIELD_BYTES:
                self.fail(
                    ApiError(
                        413,
                        "payload_too_large",
                        f"Form field '{self.part_name}' is too large",
                        {"max_bytes": MAX_FIELD_BYTES},
                    )
                )

    def on_part_end(self) -> None:
        if self.error is not None or self.part_name is None:
            return
        if self.part_is_file:
            self.file_done = True
        else:
            try:
                self.fields[self.part_name] = self.field_value.decode("utf-8")
            except UnicodeDecodeError:
                self.fail(ApiError(422, "validation_error", f"Form field '{self.part_name}' is not UTF-8"))

    def on_end(self) -> None:
        self.ended = True


async def _body_chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        log.info("client disconnected during an upload; the partial file is removed")
        raise ApiError(
            400, "client_disconnected", "The client disconnected before the upload finished"
        ) from None


def _write_block(f: IO[bytes], digest: hashlib._Hash, block: bytes) -> None:
    f.write(block)
    digest.update(block)


def partial_owner() -> str:
    """`<host>-<pid>` of this process, as partial upload names carry it."""
    host = "".join(c for c in socket.gethostname() if c.isalnum()) or "host"
    return f"{host}-{os.getpid()}"


def _open_private(tmp_dir: Path) -> tuple[Path, IO[bytes]]:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # Host and pid in the name: after a crash, the next start on this host knows the writer is dead
    # (api/main.py removes it at once; other hosts' and live writers' partials are left alone).
    path = tmp_dir / f".upload-{partial_owner()}-{uuid.uuid4().hex}.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return path, os.fdopen(fd, "wb")


async def receive_upload(
    request: Request,
    *,
    tmp_dir: Path,
    max_file_bytes: int,
    allowed_extensions: tuple[str, ...],
    file_field: str = "file",
) -> ReceivedUpload:
    """Stream a multipart body's `file_field` into a temporary file under `tmp_dir`."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            400,
            "bad_request",
            "Expected a multipart/form-data body with a boundary",
            f"send the file in the form field '{file_field}'",
        )
    max_body = max_file_bytes + FIELDS_ALLOWANCE
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body:
        raise ApiError(
            413,
            "payload_too_large",
            "Upload exceeds the size limit",
            {"max_bytes": max_file_bytes, "declared_bytes": int(declared)},
        )

    collector = _PartCollector(file_field, allowed_extensions)
    parser = MultipartParser(params[b"boundary"], collector.callbacks())  # type: ignore[arg-type]
    digest = hashlib.sha256()
    path, handle = _open_private(tmp_dir)
    received = 0
    try:
        async for chunk in _body_chunks(request):
            if not chunk:
                continue
            received += len(chunk)
            if received > max_body:
                raise ApiError(
                    413, "payload_too_large", "Upload exceeds the size limit", {"max_bytes": max_file_bytes}
                )
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise ApiError(400, "bad_request", "Malformed multipart body", str(exc)) from exc
            if collector.error is not None:
                raise collector.error
            if collector.file_size > max_file_bytes:
                raise ApiError(
                    413, "payload_too_large", "Upload exceeds the size limit", {"max_bytes": max_file_bytes}
                )
            if len(collector.pending) >= FLUSH_BYTES:
                block = bytes(collector.pending)
                collector.pending.clear()
                await asyncio.to_thread(_write_block, handle, digest, block)
        try:
            parser.finalize()
        except MultipartParseError as exc:
            raise ApiError(400, "bad_request", "Malformed multipart body", str(exc)) from exc
        if collector.error is not None:
            raise collector.error
        if collector.filename is None:
            raise ApiError(422, "validation_error", "Invalid request parameters", f"{file_field} is required")
        if not collector.file_done or not collector.ended:
            raise ApiError(400, "bad_request", "Incomplete multipart body (the upload was cut short)")
        if collector.pending:
            await asyncio.to_thread(_write_block, handle, digest, bytes(collector.pending))
            collector.pending.clear()
        await asyncio.to_thread(handle.close)
        # The loaders go by the suffix: give the finished file the client's extension.
        final = path.with_name(f"{path.stem}{extension_of(collector.filename)}")  # .tar.gz kept whole
        os.replace(path, final)
        path = final
        return ReceivedUpload(
            path=path,
            filename=collector.filename,
            extension=extension_of(collector.filename),
            size=collector.file_size,
            sha256=digest.hexdigest(),
            fields=collector.fields,
        )
    except BaseException:
        # 413, malformed bodies, client disconnects, cancellation: nothing stays on disk.
        handle.close()
        path.unlink(missing_ok=True)
        raise
