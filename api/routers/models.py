"""Model registry: streaming upload with validation, list, get, download, delete, evaluation data."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from agents.compute import run_isolated
from api.archive_stream import stream_directory_tar
from api.deps import CurrentUser, DbDep, SettingsDep, StoreDep
from api.errors import ApiError, error_responses
from api.log import security_event
from api.model_files import (
    EVAL_DATA_EXTENSIONS,
    MODEL_EXTENSIONS,
    RUNNABLE_FORMATS,
    WEIGHTS_ONLY_FORMATS,
    FormatReport,
    ProbedSignature,
    ToolError,
    check_eval_data,
    probe_input_spec,
)
from api.model_sources import (
    finished_upload_file,
    import_file,
    imported_details,
    model_fields,
    resolve_import_path,
    verify_imported,
)
from api.quotas import check_model_quota
from api.registration import (
    NAMESPACE,
    IncomingFile,
    ModelFields,
    archive_limits,
    register_model,
    tool_error,
)
from api.resumable import remove_upload
from api.routers.uploads import get_owned_upload
from api.schemas.common import MAX_PAGE_OFFSET
from api.schemas.models import DeleteResponse, ModelList, ModelPublic, UploadResponse
from api.schemas.uploads import FromUploadRequest, ImportRequest
from api.session_usage import model_in_use
from api.uploads import ReceivedUpload, extension_of, receive_upload
from state.artifacts import CHECKSUM_SUFFIX, ArtifactCorruptedError, ArtifactStore
from state.registry import ModelRecord
from state.users import User
from tools.errors import DataMismatchError, UnsafeModelError
from tools.handle import ArchitectureRef, EvalData, InputSpec
from tools.signatures import parse_signature

log = logging.getLogger("robopt.models")
router = APIRouter(prefix="/models", tags=["models"])

MAX_NAME = 200
MAX_DESCRIPTION = 2000


def _multipart_doc(extensions: tuple[str, ...], with_metadata: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary", "description": f"One of {', '.join(extensions)}"}
    }
    if with_metadata:
        properties |= {
            "name": {"type": "string", "maxLength": MAX_NAME, "description": "Defaults to the file name."},
            "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
            "architecture": {
                "type": "string",
                "description": "JSON naming a registered architecture for a state dict, e.g. "
                '{"name": "mlp_policy", "config": {}}',
            },
            "input_signature": {
                "type": "string",
                "description": "Optional JSON list completing or overriding the signature the file "
                'gives (checked against its graph), e.g. [{"name": "obs", "shape": [null, 64], '
                '"dtype": "float32"}]; null axes are dynamic; optional low/high give value ranges '
                "(token ids below the vocabulary).",
            },
        }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "properties": properties}
                }
            },
        }
    }


async def get_owned_model(db: AsyncSession, model_id: str, user: User) -> ModelRecord:
    """The model if the user may see it; another user's model answers 404 like a missing one."""
    record = await db.get(ModelRecord, model_id)
    if record is None or (user.role != "admin" and record.owner_id != user.id):
        raise ApiError(404, "not_found", "Model not found")
    return record


_tool_error = tool_error


def _refuse(
    request: Request, user: User, received: ReceivedUpload | IncomingFile | None, kind: str, err: ApiError
) -> ApiError:
    request.app.state.metrics.uploads.labels(kind, "refused").inc()
    security_event(
        "upload_refused",
        kind=kind,
        user_id=user.id,
        filename=received.filename if received else None,
        status=err.status_code,
        reason=err.error,
        message=err.message,
    )
    return err


def _parse_architecture(raw: str | None) -> ArchitectureRef | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = json.loads(raw)
        if isinstance(value, str):
            value = {"name": value}
        return ArchitectureRef.model_validate(value)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ApiError(
            422,
            "validation_error",
            "Invalid request parameters",
            'architecture must be JSON like {"name": "mlp_policy", "config": {}}',
        ) from exc


def parse_input_signature(raw: Any) -> list[InputSpec] | None:
    """A request's `input_signature` (a JSON text in a form, or a list in a body), or None."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
        return parse_signature(value)
    except json.JSONDecodeError as exc:
        raise ApiError(
            422, "validation_error", "input_signature is not valid JSON", f"{exc.msg} at position {exc.pos}"
        ) from exc
    except ToolError as exc:
        raise _tool_error(exc) from exc


def _text_field(fields: dict[str, str], name: str, limit: int) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    value = value.strip()
    if len(value) > limit:
        raise ApiError(
            422, "validation_error", "Invalid request parameters", f"{name}: at most {limit} characters"
        )
    return value or None


@router.post(
    "/upload",
    response_model=UploadResponse,
    summary="Upload a model file",
    description="Multipart form: `file` (one of " + ", ".join(MODEL_EXTENSIONS) + "), `name`, `description`, "
    "optional `architecture` (JSON) for state dicts. The body streams to disk; the size limit is "
    "enforced while streaming. The content must match the extension and must not need code to load. A "
    ".zip, .tar or .tar.gz holds a Hugging Face transformers model directory: it is unpacked member by "
    "member within MAX_ARCHIVE_MEMBERS and MAX_UNPACKED_GB and built by transformers from its config, "
    "never with the model's own code.",
    openapi_extra=_multipart_doc(MODEL_EXTENSIONS, with_metadata=True),
    responses=error_responses(400, 401, 413, 422, 429),
)
async def upload_model(
    request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep, store: StoreDep
) -> UploadResponse:
    received: ReceivedUpload | None = None
    try:
        await check_model_quota(db, user, settings)  # before a byte is read
        received = await receive_upload(
            request,
            tmp_dir=settings.uploads_dir,
            max_file_bytes=settings.max_upload_bytes,
            allowed_extensions=MODEL_EXTENSIONS,
        )
        fields = ModelFields(
            name=_text_field(received.fields, "name", MAX_NAME) or Path(received.filename).stem,
            description=_text_field(received.fields, "description", MAX_DESCRIPTION),
            architecture=_parse_architecture(received.fields.get("architecture")),
            input_signature=parse_input_signature(received.fields.get("input_signature")),
        )
        incoming = IncomingFile(
            path=received.path,
            filename=received.filename,
            extension=received.extension,
            size=received.size,
            sha256=received.sha256,
        )
        await check_model_quota(db, user, settings, adding_bytes=received.size)
        record = await register_model(
            db, store, user, incoming, fields, archive_limits=archive_limits(settings)
        )
    except ApiError as err:
        raise _refuse(request, user, received, "model", err) from None
    finally:
        if received is not None:
            received.discard()

    request.app.state.metrics.uploads.labels("model", "accepted").inc()
    request.app.state.metrics.upload_bytes.inc(record.size_bytes)
    log.info(
        "model %s uploaded by %s: %s, %d bytes, sha256 %s",
        record.id,
        user.id,
        record.format,
        record.size_bytes,
        record.sha256,
    )
    return UploadResponse(model_id=record.id, **ModelPublic.model_validate(record).model_dump())


@router.get(
    "", response_model=ModelList, summary="List models, newest first", responses=error_responses(401, 422)
)
async def list_models(
    user: CurrentUser,
    db: DbDep,
    limit: int = Query(default=20, ge=1, le=100),
    offset: int = Query(default=0, ge=0, le=MAX_PAGE_OFFSET),
) -> ModelList:
    count_query = select(func.count()).select_from(ModelRecord)
    query = select(ModelRecord)
    if user.role != "admin":
        count_query = count_query.where(ModelRecord.owner_id == user.id)
        query = query.where(ModelRecord.owner_id == user.id)
    total = (await db.exec(count_query)).one()
    rows = (
        await db.exec(
            query.order_by(col(ModelRecord.created_at).desc(), col(ModelRecord.id).desc())
            .offset(offset)
            .limit(limit)
        )
    ).all()
    return ModelList(
        items=[ModelPublic.model_validate(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/{model_id}", response_model=ModelPublic, summary="Get a model", responses=error_responses(401, 404)
)
async def get_model(model_id: str, user: CurrentUser, db: DbDep) -> ModelPublic:
    return ModelPublic.model_validate(await get_owned_model(db, model_id, user))


@router.get(
    "/{model_id}/download",
    summary="Download the model file (a model directory as a .tar archive)",
    description="A model uploaded as a file comes back as that file (`X-Content-SHA256` is its digest). A "
    "model directory (uploaded as .zip, .tar or .tar.gz) comes back as a .tar of its files under one "
    "folder, built while it is sent; `X-Model-Layout` says so. `format=onnx` gives the ONNX form saved "
    "beside an optimized transformers directory (`model.onnx`, or a .tar holding it and its external data "
    "file above 2 GiB); 404 when the model has none. `X-Model-Runtime` names the runtime a download needs.",
    response_class=FileResponse,
    responses={
        200: {"content": {"application/octet-stream": {}, "application/x-tar": {}}},
        **error_responses(401, 404, 422),
    },
)
async def download_model(
    model_id: str,
    user: CurrentUser,
    db: DbDep,
    store: StoreDep,
    format: Literal["onnx"] | None = Query(  # noqa: A002 - the query parameter's public name
        None, description="Omit for the model in its own format; `onnx` for its ONNX form."
    ),
) -> Response:
    record = await get_owned_model(db, model_id, user)
    await verify_imported(record)
    stem = _download_stem(record)
    if format == "onnx" and record.format != "onnx":
        return await _onnx_form(store, record, stem)
    path = await stored_artifact(store, record, record.stored_path)
    runtime = {"X-Model-Runtime": download_runtime(record)}
    if path.is_dir():
        return StreamingResponse(
            stream_directory_tar(path, stem),
            media_type="application/x-tar",
            headers={
                "Content-Disposition": _attachment(f"{stem}.tar"),
                "X-Model-Layout": record.format,
                **runtime,
            },
        )
    if not path.is_file():
        log.error("model %s: file %s is missing from the artifact store", record.id, path)
        raise ApiError(404, "not_found", "Model file is missing from storage")
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{stem}{record.extension}",
        headers={"X-Content-SHA256": record.sha256, **runtime},
    )


async def stored_artifact(store: ArtifactStore, record: ModelRecord, stored: str) -> Path:
    """The verified local path of one of the model's stored files (or directories), from this machine's
    working tree or shared storage (ARTIFACT_STORE): 404 when it is nowhere, 500 when it is corrupted."""
    try:
        return await asyncio.to_thread(store.resolve, stored, NAMESPACE, record.id)
    except FileNotFoundError:
        log.error("model %s: %s is missing from the artifact store", record.id, stored)
        raise ApiError(404, "not_found", "Model file is missing from storage") from None
    except ArtifactCorruptedError as exc:
        log.error("model %s: %s", record.id, exc)
        raise ApiError(
            500,
            "artifact_corrupted",
            "The stored model file is corrupted: its bytes do not match the checksum recorded when it "
            "was stored, so it is not served",
            f"expected sha256 {exc.expected or '(none)'}, found {exc.actual or '(missing)'}; upload or "
            "optimize the model again",
        ) from exc


async def _onnx_form(store: ArtifactStore, record: ModelRecord, stem: str) -> Response:
    details = record.format_details or {}
    form = (details.get("downloads") or {}).get("onnx")
    if not form:
        raise ApiError(
            404,
            "not_found",
            "This model has no ONNX form",
            details.get("onnx_unavailable")
            or "ONNX forms are saved beside optimized versions of models uploaded as directories",
        )
    graph = await stored_artifact(store, record, str(Path(record.stored_path).parent / form["path"]))
    headers = {
        "X-Model-Runtime": str(form.get("runtime") or "onnxruntime"),
        "X-Content-SHA256": form["sha256"],
    }
    if form.get("external_data"):
        return StreamingResponse(
            stream_directory_tar(graph.parent, f"{stem}-onnx"),
            media_type="application/x-tar",
            headers={"Content-Disposition": _attachment(f"{stem}-onnx.tar"), **headers},
        )
    if not graph.is_file():
        log.error("model %s: ONNX form %s is missing from the artifact store", record.id, graph)
        raise ApiError(404, "not_found", "The ONNX form is missing from storage")
    return FileResponse(
        graph, media_type="application/octet-stream", filename=f"{stem}.onnx", headers=headers
    )


_RUNTIMES = {
    "onnx": "onnxruntime",
    "torchscript": "torch (torch.jit.load)",
    "pt2": "torch (torch.export.load(path).module())",
    "hf_directory": "transformers (from_pretrained)",
    "state_dict": "torch (the weights of a registered architecture)",
    "safetensors": "safetensors + torch (the weights of a registered architecture)",
}


def download_runtime(record: ModelRecord) -> str:
    """The runtime a model's download needs: what its optimization wrote down, else its format's."""
    return str((record.format_details or {}).get("runtime") or _RUNTIMES.get(record.format, record.format))


def _attachment(filename: str) -> str:
    quoted = quote(filename)  # as Starlette's FileResponse writes it: RFC 6266 for non-ASCII names
    return (
        f"attachment; filename*=utf-8''{quoted}"
        if quoted != filename
        else f'attachment; filename="{filename}"'
    )


def _download_stem(record: ModelRecord) -> str:
    """The client's file name without its extension (`.tar.gz` as one), safe for a header."""
    name = record.original_filename or ""
    ext = extension_of(name)
    stem = name[: -len(ext)] if ext and name.lower().endswith(ext) else Path(name).stem
    stem = "".join(c for c in stem if c.isprintable() and c not in '"\\/;').strip()
    return stem or record.id


@router.delete(
    "/{model_id}",
    response_model=DeleteResponse,
    summary="Delete a model (file and record)",
    responses=error_responses(401, 404, 409),
)
async def delete_model(model_id: str, user: CurrentUser, db: DbDep, store: StoreDep) -> DeleteResponse:
    record = await get_owned_model(db, model_id, user)
    if await model_in_use(db, record.id):
        raise ApiError(409, "conflict", "Model is used by a running optimization; cancel it first")
    await db.delete(record)
    await db.commit()
    await asyncio.to_thread(store.remove, NAMESPACE, record.id)
    log.info("model %s deleted by %s", record.id, user.id)
    return DeleteResponse(deleted=True, id=record.id)


def _eval_info(inputs: dict[str, Any], targets: Any) -> dict[str, Any]:
    first = next(iter(inputs.values()))
    return {
        "num_samples": int(first.shape[0]),
        "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        "has_targets": targets is not None,
        "targets": {"shape": list(targets.shape), "dtype": str(targets.dtype)}
        if targets is not None
        else None,
    }


async def _check_eval_against_model(
    store: ArtifactStore, record: ModelRecord, data: EvalData
) -> ProbedSignature | None:
    """Check the data against the model's signature; for a model without one, the data defines it.

    Returns the probe to store when the data defined the signature (names matched against the graph's
    argument names, tried once on the model), None when the model already had one.
    """
    if record.input_spec:
        from tools.runtime import check_inputs  # imports torch: kept off the API's import path

        specs = [InputSpec.model_validate(s) for s in record.input_spec]
        try:
            check_inputs(specs, data.inputs)
        except DataMismatchError as exc:
            raise _tool_error(exc) from exc
        return None
    if record.format not in RUNNABLE_FORMATS or (
        record.format in WEIGHTS_ONLY_FORMATS and not record.architecture
    ):
        raise ApiError(
            422,
            "data_mismatch",
            "This model cannot be run, so evaluation data cannot be checked against it",
            "upload state dicts with their architecture; .pb and .h5 models are stored for inspection only",
        )
    report = FormatReport(format=record.format, extension=record.extension, size_bytes=record.size_bytes)
    architecture = ArchitectureRef.model_validate(record.architecture) if record.architecture else None
    try:
        model_path = await stored_artifact(store, record, record.stored_path)
        probed = await run_isolated(probe_input_spec, model_path, report, architecture, None, data)
    except ToolError as exc:
        raise _tool_error(exc) from exc
    return probed


@router.post(
    "/{model_id}/evaluation-data",
    response_model=ModelPublic,
    summary="Attach evaluation data (.npz or .safetensors of named inputs, optional `targets`)",
    description="Array names must match the model's inputs; the first axis indexes samples. "
    "Without `targets`, accuracy is measured as fidelity to the original model's outputs.",
    openapi_extra=_multipart_doc(EVAL_DATA_EXTENSIONS, with_metadata=False),
    responses=error_responses(400, 401, 404, 413, 422),
)
async def attach_evaluation_data(
    model_id: str, request: Request, user: CurrentUser, db: DbDep, settings: SettingsDep, store: StoreDep
) -> ModelPublic:
    record = await get_owned_model(db, model_id, user)  # before reading the body: 404 costs no upload
    received: ReceivedUpload | None = None
    try:
        received = await receive_upload(
            request,
            tmp_dir=settings.uploads_dir,
            max_file_bytes=settings.max_upload_bytes,
            allowed_extensions=EVAL_DATA_EXTENSIONS,
        )
        try:
            data = await run_isolated(check_eval_data, received.path, received.extension)
        except UnsafeModelError as exc:
            raise _tool_error(exc) from exc
        except ToolError as exc:
            raise _tool_error(exc) from exc
        defined = await _check_eval_against_model(store, record, data)
        info = _eval_info(data.inputs, data.targets) | {
            "filename": received.filename,
            "size_bytes": received.size,
            "sha256": received.sha256,
        }
        destination = store.directory(NAMESPACE, record.id) / f"eval_data{received.extension}"
        previous = Path(record.eval_data_path) if record.eval_data_path else None
        os.replace(received.path, destination)
        await asyncio.to_thread(store.publish, destination, NAMESPACE, record.id, destination.name)
        if previous is not None and previous != destination.resolve():
            previous.unlink(missing_ok=True)
            previous.with_name(previous.name + CHECKSUM_SUFFIX).unlink(missing_ok=True)
        record.eval_data_path = str(destination.resolve())
        record.eval_data_info = info
        if defined is not None and defined.inputs:
            record.input_spec = [s.model_dump() for s in defined.inputs]
            signature = dict((record.format_details or {}).get("signature") or {})
            signature.update(source="eval_data", missing=[])
            details = {**(record.format_details or {}), "signature": signature}
            if defined.outputs is not None:
                details["outputs"] = defined.outputs
            record.format_details = details
        db.add(record)
        await db.commit()
        await db.refresh(record)
    except ApiError as err:
        raise _refuse(request, user, received, "eval_data", err) from None
    finally:
        if received is not None:
            received.discard()
    request.app.state.metrics.uploads.labels("eval_data", "accepted").inc()
    return ModelPublic.model_validate(record)


# -- models from bytes already on the server (resumable uploads, server-side import) --------------


@router.post(
    "/from-upload",
    response_model=UploadResponse,
    summary="Register a finished resumable upload as a model",
    description="JSON: `upload_id` (a finished upload of yours, see /uploads), `name`, `description`, "
    "optional `architecture` and `input_signature`. Validated like a multipart upload; the file is moved "
    "into the registry (no copy) and the upload is gone. A refused file is removed with its upload.",
    responses=error_responses(401, 404, 409, 410, 422),
)
async def model_from_upload(
    body: FromUploadRequest,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    settings: SettingsDep,
    store: StoreDep,
) -> UploadResponse:
    upload = await get_owned_upload(db, body.upload_id, user, settings)
    fields = model_fields(body, parse_input_signature)
    incoming = await asyncio.to_thread(finished_upload_file, settings, upload)
    if upload.sha256 is None:  # hashed once: a retry after a transient failure reads it from the row
        upload.sha256 = incoming.sha256
        db.add(upload)
        await db.commit()
    try:
        record = await register_model(
            db,
            store,
            user,
            incoming,
            fields,
            extra_details={"received_by": "tus"},
            archive_limits=archive_limits(settings),
        )
    except ApiError as err:
        await remove_upload(db, settings, upload)
        raise _refuse(request, user, incoming, "model", err) from None
    await remove_upload(db, settings, upload)  # its file is now the model's
    request.app.state.metrics.uploads.labels("model", "accepted").inc()
    request.app.state.metrics.upload_bytes.inc(record.size_bytes)
    log.info(
        "model %s registered from upload %s by %s, sha256 %s", record.id, upload.id, user.id, record.sha256
    )
    return UploadResponse(model_id=record.id, **ModelPublic.model_validate(record).model_dump())


@router.post(
    "/import",
    response_model=UploadResponse,
    summary="Register a model file or directory that is already on the server (no copy)",
    description="JSON: `path` under one of MODEL_IMPORT_DIRS (symlinks resolved, then checked), `name`, "
    "`description`, optional `architecture` and `input_signature`. Roles in IMPORT_ALLOWED_ROLES only "
    "(default: administrators). The files stay where they are; their SHA-256 is recorded and checked "
    "again before a session or a download uses them. Deleting the model never deletes them.",
    responses=error_responses(400, 401, 403, 404, 409, 422),
)
async def import_model(
    body: ImportRequest,
    request: Request,
    user: CurrentUser,
    db: DbDep,
    settings: SettingsDep,
    store: StoreDep,
) -> UploadResponse:
    try:
        resolved = resolve_import_path(body.path, user, settings)
        fields = model_fields(body, parse_input_signature)
        incoming = await asyncio.to_thread(import_file, resolved, MODEL_EXTENSIONS)
        record = await register_model(
            db,
            store,
            user,
            incoming,
            fields,
            adopt=False,
            extra_details=imported_details(resolved),
            archive_limits=archive_limits(settings),
        )
    except ApiError as err:
        security_event(
            "import_refused", user_id=user.id, path=body.path[:500], status=err.status_code, reason=err.error
        )
        raise
    log.info("model %s imported by %s from %s, sha256 %s", record.id, user.id, resolved, record.sha256)
    return UploadResponse(model_id=record.id, **ModelPublic.model_validate(record).model_dump())
