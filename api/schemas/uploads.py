"""Bodies of the two routes that register a model from bytes already on the server."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

MAX_NAME = 200
MAX_DESCRIPTION = 2000


class ModelFieldsIn(BaseModel):
    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    architecture: dict[str, Any] | str | None = Field(
        default=None,
        description='A registered architecture for a state dict, e.g. {"name": "mlp_policy", "config": {}}',
    )
    input_signature: list[dict[str, Any]] | None = Field(
        default=None,
        description='Optional, e.g. [{"name": "obs", "shape": [null, 64], "dtype": "float32"}]',
    )


class FromUploadRequest(ModelFieldsIn):
    upload_id: str = Field(min_length=1, max_length=32, description="A finished resumable upload of yours.")


class ImportRequest(ModelFieldsIn):
    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Absolute path of a model file or directory under one of MODEL_IMPORT_DIRS.",
    )
