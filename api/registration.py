"""Registering a model file that is already on the server's disk, whatever way it arrived.

A multipart upload, a finished resumable (tus) upload and a server-side import all end here, so they
are validated the same way: the content is checked (no code from it runs), its input signature probed
on one forward pass, and a registry row written. A file that is moved in (`adopt=True`) is renamed
into the model's store directory; an imported one (`adopt=False`) stays where it is and only its
digest is recorded. An archive of a model directory (.zip, .tar, .tar.gz) is extracted member by
member (tools.archives, caps from the settings) into the store as `<model id>/model/`, the directory
the record points to; its record keeps the archive's SHA-256 and the unpacked size. On any refusal
nothing is left in the store (no partial extraction either).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from agents.compute import run_isolated
from api.errors import ApiError
from api.model_files import ToolError, check_model_file, probe_input_spec, report_details
from state.artifacts import ArtifactStore, new_id
from state.registry import ModelRecord
from state.settings import Settings
from state.users import User
from tools.archives import ArchiveLimits, ExtractedArchive, extract_archive, is_archive_extension
from tools.handle import ArchitectureRef, InputSpec

NAMESPACE = "models"
DIRECTORY_NAME = "model"  # an archive's model directory, under the model's store directory


@dataclass
class ModelFields:
    """What the user says about a model beside its bytes."""

    name: str
    description: str | None = None
    architecture: ArchitectureRef | None = None
    input_signature: list[InputSpec] | None = None


@dataclass
class IncomingFile:
    """A model file (or directory) on the server's disk and what is known about it."""

    path: Path
    filename: str  # the client's name, metadata only
    extension: str
    size: int
    sha256: str


def archive_limits(settings: Settings) -> ArchiveLimits:
    """The settings' caps on what one uploaded archive may unpack to."""
    return ArchiveLimits(
        max_members=settings.max_archive_members, max_unpacked_bytes=settings.max_unpacked_bytes
    )


def tool_error(exc: ToolError, status: int = 422) -> ApiError:
    return ApiError(status, exc.code, exc.message, exc.details)


async def register_model(
    db: AsyncSession,
    store: ArtifactStore,
    user: User,
    incoming: IncomingFile,
    fields: ModelFields,
    *,
    adopt: bool = True,
    extra_details: dict[str, Any] | None = None,
    archive_limits: ArchiveLimits | None = None,
) -> ModelRecord:
    """Validate `incoming` and write its registry row; raise ApiError (nothing stored) when refused.

    An archive is extracted first, within `archive_limits` (the service passes its settings; the
    toolbox's defaults otherwise). With `adopt=True` the archive is removed once it is unpacked.
    """
    model_dir: Path | None = None
    extracted: ExtractedArchive | None = None
    try:
        check_path = incoming.path
        if is_archive_extension(incoming.extension) and incoming.path.is_file() and not adopt:
            # Registering in place means no second copy; an archive is only usable unpacked.
            raise ApiError(
                422,
                "validation_error",
                f"A {incoming.extension} archive cannot be registered in place: it would be unpacked into "
                "a second copy",
                "unpack it on the server and register the model directory instead",
            )
        if is_archive_extension(incoming.extension) and incoming.path.is_file():
            model_id = new_id()
            model_dir = store.directory(NAMESPACE, model_id)
            try:
                extracted = await run_isolated(
                    extract_archive,
                    incoming.path,
                    model_dir / DIRECTORY_NAME,
                    extension=incoming.extension,
                    limits=archive_limits or ArchiveLimits(),
                )
            except ToolError as exc:
                raise tool_error(exc) from exc
            check_path = extracted.root
        try:
            report = await run_isolated(check_model_file, check_path, incoming.extension)
            if fields.input_signature is not None and not report.loadable:
                raise ApiError(
                    422,
                    "validation_error",
                    f"A {report.format} model is stored for inspection only; it takes no input_signature",
                )
            probed = await run_isolated(
                probe_input_spec, check_path, report, fields.architecture, fields.input_signature
            )
        except ToolError as exc:
            raise tool_error(exc) from exc

        if extracted is not None:
            destination = extracted.root
            size = extracted.unpacked_bytes
            if adopt:
                incoming.path.unlink(missing_ok=True)  # its content now lives unpacked in the store
            assert model_dir is not None
            # Checksums recorded and the files published (ARTIFACT_STORE): any worker can open it.
            await asyncio.to_thread(
                store.publish_tree, model_dir / DIRECTORY_NAME, NAMESPACE, model_id, DIRECTORY_NAME
            )
        else:
            model_id = new_id()
            model_dir = store.directory(NAMESPACE, model_id)
            size = incoming.size
            if adopt:
                name = DIRECTORY_NAME if incoming.path.is_dir() else f"model{incoming.extension}"
                destination = model_dir / name
                os.replace(incoming.path, destination)  # same file system: an atomic rename, no copy
                publish = store.publish_tree if destination.is_dir() else store.publish
                await asyncio.to_thread(publish, destination, NAMESPACE, model_id, name)
            else:
                destination = incoming.path  # an import: its own files, outside the store
        archive_details = (
            {
                "archive": {
                    "extension": incoming.extension,
                    "size_bytes": incoming.size,
                    "members": extracted.members,
                    "files": len(extracted.files),
                    "unpacked_bytes": extracted.unpacked_bytes,
                    "stripped_folder": extracted.stripped_prefix,
                }
            }
            if extracted is not None
            else {}
        )
        record = ModelRecord(
            id=model_id,
            owner_id=user.id,
            name=fields.name,
            description=fields.description,
            format=report.format,
            extension=incoming.extension,
            original_filename=incoming.filename,
            size_bytes=size,
            sha256=incoming.sha256,
            stored_path=str(destination.resolve()),
            architecture=fields.architecture.model_dump() if fields.architecture else None,
            input_spec=[s.model_dump() for s in probed.inputs] if probed.inputs else None,
            format_details={
                **report_details(report),
                **archive_details,
                **({"signature": probed.info} if probed.info else {}),
                **({"outputs": probed.outputs} if probed.outputs is not None else {}),
                **(extra_details or {}),
            },
        )
        db.add(record)
        await db.commit()
        await db.refresh(record)
        return record
    except BaseException:
        if model_dir is not None:
            store.remove(NAMESPACE, model_dir.name)
        raise
