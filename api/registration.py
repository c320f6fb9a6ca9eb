"""Registering a model file that is already on the server's disk, whatever way it arrived.

A multipart upload, a finished resumable (tus) upload and a server-side import all end here, so they
are validated the same way: the content is checked (no code from it runs), its input signature probed
on one forward pass, and a registry row written. A file that is moved in (`adopt=True`) is renamed
into the model's store directory; an imported one (`adopt=False`) stays where it is and only its
digest is recorded. On any refusal nothing is left in the store.
"""

from __future__ import annotations

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
from state.users import User
from tools.handle import ArchitectureRef, InputSpec

NAMESPACE = "models"


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
) -> ModelRecord:
    """Validate `incoming` and write its registry row; raise ApiError (nothing stored) when refused."""
    model_dir: Path | None = None
    try:
        try:
            report = await run_isolated(check_model_file, incoming.path, incoming.extension)
            if fields.input_signature is not None and not report.loadable:
                raise ApiError(
                    422,
                    "validation_error",
                    f"A {report.format} model is stored for inspection only; it takes no input_signature",
                )
            probed = await run_isolated(
                probe_input_spec, incoming.path, report, fields.architecture, fields.input_signature
            )
        except ToolError as exc:
            raise tool_error(exc) from exc

        model_id = new_id()
        model_dir = store.directory(NAMESPACE, model_id)
        if adopt:
            destination = model_dir / f"model{incoming.extension}"
            os.replace(incoming.path, destination)  # same file system: an atomic rename, no copy
        else:
            destination = incoming.path
        record = ModelRecord(
            id=model_id,
            owner_id=user.id,
            name=fields.name,
            description=fields.description,
            format=report.format,
            extension=incoming.extension,
            original_filename=incoming.filename,
            size_bytes=incoming.size,
            sha256=incoming.sha256,
            stored_path=str(destination.resolve()),
            architecture=fields.architecture.model_dump() if fields.architecture else None,
            input_spec=[s.model_dump() for s in probed.inputs] if probed.inputs else None,
            format_details={
                **report_details(report),
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
