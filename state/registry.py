"""The model registry: one row per uploaded (or optimized) model file."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from state.users import new_hex_id, utcnow


class ModelRecord(SQLModel, table=True):
    __tablename__ = "models"

    id: str = Field(default_factory=new_hex_id, primary_key=True, max_length=32)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=32)
    name: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    # Detected format: onnx, torchscript, pt2, state_dict, safetensors, tensorflow, keras, ...
    format: str = Field(max_length=32)
    extension: str = Field(max_length=16)
    original_filename: str = Field(max_length=255)
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    stored_path: str = Field(max_length=1024)
    created_at: datetime = Field(default_factory=utcnow, index=True)
    architecture: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    input_spec: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    format_details: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    eval_data_path: str | None = Field(default=None, max_length=1024)
    eval_data_info: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    parent_model_id: str | None = Field(default=None, index=True, max_length=32)
    source_session_id: str | None = Field(default=None, index=True, max_length=32)
