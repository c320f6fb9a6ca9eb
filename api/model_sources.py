"""Models from bytes already on the server: a finished resumable upload, or a server-side import.

Both go through `register_model`, so they are validated exactly like a multipart upload. A finished
upload's file is renamed into the store (no copy); an imported file or directory stays where it is,
its digest recorded and checked again before each use (`verify_imported`): the files belong to
someone else and may change.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.errors import ApiError
from api.registration import IncomingFile, ModelFields
from api.resumable import locked_file, upload_path
from api.schemas.uploads import ModelFieldsIn
from api.uploads import extension_of
from state.artifacts import sha256_file
from state.digests import DigestError, content_digest, content_size
from state.registry import ModelRecord
from state.settings import Settings
from state.uploads import ResumableUpload
from state.users import User
from tools.handle import ArchitectureRef

log = logging.getLogger("robopt.models")

IMPORTED = "imported"  # key in format_details of an imported model


def architecture_of(raw: dict[str, Any] | str | None) -> ArchitectureRef | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        return ArchitectureRef.model_validate({"name": raw} if isinstance(raw, str) else raw)
    except ValidationError as exc:
        raise ApiError(
            422,
            "validation_error",
            "Invalid request parameters",
            'architecture must be like {"name": "mlp_policy", "config": {}}: '
            + "; ".join(e["msg"] for e in exc.errors()),
        ) from exc


def model_fields(body: ModelFieldsIn, parse_signature: Any) -> ModelFields:
    return ModelFields(
        name=body.name.strip(),
        description=(body.description or "").strip() or None,
        architecture=architecture_of(body.architecture),
        input_signature=parse_signature(body.input_signature),
    )


def finished_upload_file(settings: Settings, upload: ResumableUpload) -> IncomingFile:
    """The completed upload's file, hashed once (streamed) and described for `register_model`."""
    if upload.offset < upload.length:
        raise ApiError(
            409,
            "upload_incomplete",
            "The upload is not finished",
            {"offset": upload.offset, "length": upload.length},
        )
    extension = extension_of(upload.filename)
    path = upload_path(settings, upload, extension)
    with locked_file(path) as fd:  # no PATCH is writing it while it is hashed
        size = os.fstat(fd).st_size
        if size != upload.length:
            raise ApiError(
                409,
                "upload_incomplete",
                "The upload's file is shorter than its length",
                {"on_disk": size, "length": upload.length},
            )
        digest = upload.sha256 or sha256_file(path)
    return IncomingFile(path=path, filename=upload.filename, extension=extension, size=size, sha256=digest)


def _inside(path: Path, root: Path) -> bool:
    return os.path.commonpath([path, root]) == str(root)


def resolve_import_path(raw: str, user: User, settings: Settings) -> Path:
    """The real path of an import request, refused unless the role may import and it is allow-listed."""
    if user.role not in settings.import_allowed_roles:
        raise ApiError(
            403,
            "forbidden",
            "Your role may not import server files",
            {"role": user.role, "allowed_roles": list(settings.import_allowed_roles)},
        )
    if not settings.model_import_dirs:
        raise ApiError(403, "import_disabled", "Server-side import is disabled (MODEL_IMPORT_DIRS is empty)")
    if "\x00" in raw or not os.path.isabs(raw):
        raise ApiError(422, "validation_error", "path must be an absolute path on the server", raw[:200])
    roots = [Path(os.path.realpath(d)) for d in settings.model_import_dirs]
    # Symlinks followed, `..` collapsed: the real target is what must lie under an allowed directory.
    resolved = Path(os.path.realpath(raw))
    if not any(_inside(resolved, root) for root in roots):
        raise ApiError(
            403,
            "path_not_allowed",
            "The path is outside the directories the server imports from",
            {"allowed_dirs": [str(r) for r in roots]},
        )
    if not resolved.exists():
        raise ApiError(404, "not_found", "No file or directory at that path", str(resolved))
    if not (resolved.is_file() or resolved.is_dir()):
        raise ApiError(422, "validation_error", "The path is neither a regular file nor a directory")
    return resolved


def import_file(resolved: Path, allowed_extensions: tuple[str, ...]) -> IncomingFile:
    """Digest and size of an allow-listed file or directory (a thread: it reads every byte)."""
    if resolved.is_file():
        extension = extension_of(resolved.name)
        if extension not in allowed_extensions:
            raise ApiError(
                400,
                "unsupported_format",
                f"File extension '{extension or '(none)'}' is not accepted",
                {"allowed_extensions": list(allowed_extensions)},
            )
    else:
        extension = ""  # a model directory: its layout, not a suffix, says the format
    try:
        digest = content_digest(resolved)
        size = content_size(resolved)
    except DigestError as exc:
        raise ApiError(422, "validation_error", "The directory cannot be imported", str(exc)) from exc
    # Checked again after reading: a path swapped for a symlink meanwhile is not followed out.
    if Path(os.path.realpath(resolved)) != resolved:
        raise ApiError(409, "conflict", "The path changed while it was being imported")
    return IncomingFile(path=resolved, filename=resolved.name, extension=extension, size=size, sha256=digest)


def imported_details(resolved: Path) -> dict[str, Any]:
    return {
        IMPORTED: {
            "path": str(resolved),
            "digest": "sha256-tree" if resolved.is_dir() else "sha256",
        }
    }


def is_imported(record: ModelRecord) -> bool:
    return bool((record.format_details or {}).get(IMPORTED))


async def verify_imported(record: ModelRecord) -> None:
    """For an imported model, 409 when its files no longer match the digest recorded at import."""
    if not is_imported(record):
        return
    path = Path(record.stored_path)
    try:
        digest = await asyncio.to_thread(content_digest, path)
    except (OSError, DigestError) as exc:
        raise ApiError(
            409, "model_changed", "The imported model's files can no longer be read", str(exc)
        ) from exc
    if digest != record.sha256:
        log.warning("imported model %s changed on disk (%s)", record.id, path)
        raise ApiError(
            409,
            "model_changed",
            "The imported model's files changed since they were imported; import them again",
            {"path": str(path), "recorded_sha256": record.sha256, "current_sha256": digest},
        )
