"""Hugging Face transformers model directories for tests: tiny BERT and ViT built from configs (random
weights, nothing downloaded), saved with `save_pretrained`, and packed the way users pack them."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import torch

TEXT_VOCAB = 512
IMAGE_SIZE = 32


def bert_config(**overrides: Any) -> Any:
    from transformers import BertConfig

    values: dict[str, Any] = {
        "vocab_size": TEXT_VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 64,
    }
    return BertConfig(**{**values, **overrides})


def vit_config(**overrides: Any) -> Any:
    from transformers import ViTConfig

    values: dict[str, Any] = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "image_size": IMAGE_SIZE,
        "patch_size": 8,
        "num_labels": 5,
    }
    return ViTConfig(**{**values, **overrides})


def save_bert(directory: Path, *, seed: int = 0, shard_kb: int | None = None, **save: Any) -> Path:
    """A BertModel (a text encoder) saved to `directory`; sharded when `shard_kb` is given."""
    from transformers import BertModel

    torch.manual_seed(seed)
    model = BertModel(bert_config())
    if shard_kb:
        save["max_shard_size"] = f"{shard_kb}KB"
    model.save_pretrained(directory, **save)
    return directory


def save_vit(directory: Path, *, seed: int = 0, shard_kb: int | None = None, **save: Any) -> Path:
    """A ViTForImageClassification (a vision model with a head) saved to `directory`."""
    from transformers import ViTForImageClassification

    torch.manual_seed(seed)
    model = ViTForImageClassification(vit_config())
    if shard_kb:
        save["max_shard_size"] = f"{shard_kb}KB"
    model.save_pretrained(directory, **save)
    return directory


def edit_json(path: Path, **changes: Any) -> None:
    value = json.loads(path.read_text())
    value.update(changes)
    path.write_text(json.dumps(value))


def pack(directory: Path, archive: Path, *, folder: str | None = None) -> Path:
    """`directory` as .zip / .tar / .tar.gz / .tgz (by `archive`'s name), under `folder/` (default: the
    directory's name), as `zip -r` or `tar czf` of a model folder gives it."""
    folder = directory.name if folder is None else folder
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files:
                zf.write(path, f"{folder}/{path.relative_to(directory).as_posix()}" if folder else path.name)
    else:
        mode = "w:gz" if name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(archive, mode) as tf:
            for path in files:
                rel = path.relative_to(directory).as_posix()
                tf.add(path, f"{folder}/{rel}" if folder else rel)
    return archive


def directory_files(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
