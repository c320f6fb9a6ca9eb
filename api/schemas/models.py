"""Model registry schemas (the table lives in state/registry.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.schemas.common import PageMeta, UtcDatetime


class InputSpecPublic(BaseModel):
    name: str
    shape: list[int | None]
    dtype: str
    low: float | None = None
    high: float | None = None


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Server-generated id.")
    owner_id: str
    name: str
    description: str | None
    format: str = Field(description="Detected format: onnx, torchscript, pt2, state_dict, safetensors, ...")
    extension: str
    original_filename: str
    size_bytes: int
    sha256: str
    created_at: UtcDatetime
    architecture: dict[str, Any] | None = None
    input_spec: list[InputSpecPublic] | None = Field(
        default=None, description="Input signature when the model is runnable; None for stored-only formats."
    )
    format_details: dict[str, Any] | None = None
    eval_data_info: dict[str, Any] | None = None
    parent_model_id: str | None = None
    source_session_id: str | None = None


class UploadResponse(ModelPublic):
    """The stored metadata plus the spec's `model_id`."""

    model_id: str


class ModelList(PageMeta):
    items: list[ModelPublic]


class DeleteResponse(BaseModel):
    deleted: bool = True
    id: str
