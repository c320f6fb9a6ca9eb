"""Hugging Face transformers model directories: recognised, validated as data, built without remote code.

A directory (an extracted upload archive, or an imported training run) is a transformers model when it
holds `config.json` and weights at its top:

- `config.json`: read as JSON (at most MAX_JSON_BYTES), an object with a `model_type`. A config that
  asks for code of its own (`auto_map`, `trust_remote_code`, `custom_pipelines`, anywhere in it), or
  whose `architectures` class or `model_type` transformers does not itself provide, is refused:
  robopt never runs a model's own Python. The exception is an OpenVLA checkpoint, which
  tools.openvla_layout maps onto the project's own `vla` architecture without running its code.
- Weights: `model.safetensors`, or shards `model-0000N-of-0000M.safetensors` with
  `model.safetensors.index.json`; or a pickled `pytorch_model.bin` (or its shards and index). Every
  safetensors header is checked (dtypes, shapes, offsets against the file size) and the index's
  `weight_map` against the tensors the shards actually hold: a shard it names that is missing, a tensor
  that is not where it says, a shard it does not name. Pickled weights go through the pickle scanner
  (tools.formats) before `torch.load(weights_only=True)` reads them.
- Every other file (tokenizer, processor, normalization statistics) is kept and counted, never loaded
  or executed, except `preprocessor_config.json`, read as data for the pixel range of vision models.
  Symbolic links and other non-regular files are refused (an imported directory could point anywhere).

The model is built by transformers' own class for the config (`architectures[0]` looked up in the
`transformers` namespace, else `AutoModel`) with `from_pretrained(local_files_only=True,
trust_remote_code=False)`: transformers 5 creates the modules on the meta device and fills them from
the memory-mapped safetensors, so a checkpoint is not held twice in RAM. The handle's model is a
`TransformersModule`: the library model, called with the signature's inputs in order, returning a dict
of its tensor outputs (`last_hidden_state`, `pooler_output`, `logits`, ...), which every tool reads.
tools.formats imports this module only when it meets a directory, so the API process pays for torch
and transformers only then.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tools.errors import InvalidModelError, UnsafeModelError
from tools.handle import ArchitectureRef, InputSpec

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_NAME = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
MAX_JSON_BYTES = 16 * 1024 * 1024  # config, index and processor files read as data
MAX_FILES = 100_000
# The runtime's default length of dynamic axes (tools.runtime.synthesize_inputs).
DEFAULT_SEQUENCE = 16
DEFAULT_IMAGE_SIDE = 224
_REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code", "custom_pipelines")
_SHARD = re.compile(r"^(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)$")
_REMOTE_CODE_HINT = (
    "robopt builds models only from classes transformers itself provides and never runs a model's own "
    "Python; save the model with a transformers class (model.save_pretrained) or export it to ONNX"
)


@dataclass
class DirectoryLayout:
    """What a validated model directory holds (all read as data; no weights materialised)."""

    root: Path
    config: dict[str, Any]
    weights: str  # safetensors | safetensors_sharded | pytorch_bin | pytorch_bin_sharded
    weight_files: list[str]
    tensors: dict[str, tuple[list[int], str]]  # name -> (shape, dtype)
    files: dict[str, int]  # relative path -> bytes, every file
    model_class: str | None  # transformers class name; None for OpenVLA (our own vla architecture)
    openvla: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def safetensors(self) -> bool:
        return self.weights.startswith("safetensors")

    @property
    def other_files(self) -> list[str]:
        weights = set(self.weight_files) | {CONFIG_NAME, SAFETENSORS_INDEX, PICKLE_INDEX}
        return [f for f in self.files if f not in weights]


# ---------------------------------------------------------------------------------------------
# validation


def read_json_file(path: Path, *, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON file read as data, size-capped; InvalidModelError naming `what` otherwise."""
    size = path.stat().st_size
    if size > limit:
        raise InvalidModelError(f"{what} is {size} bytes; at most {limit} are read")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{what} is not valid JSON: {exc}") from exc


def list_files(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path -> bytes), without following links; links and special
    files are refused."""
    files: dict[str, int] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                info = entry.stat(follow_symlinks=False)
                rel = Path(entry.path).relative_to(root).as_posix()
                if stat.S_ISLNK(info.st_mode):
                    raise UnsafeModelError(
                        f"'{rel}' in the model directory is a symbolic link; links are refused"
                    )
                if stat.S_ISDIR(info.st_mode):
                    stack.append(Path(entry.path))
                elif stat.S_ISREG(info.st_mode):
                    files[rel] = int(info.st_size)
                    if len(files) > MAX_FILES:
                        raise UnsafeModelError(f"the model directory holds more than {MAX_FILES} files")
                else:
                    raise UnsafeModelError(f"'{rel}' in the model directory is not a regular file or folder")
    return dict(sorted(files.items()))


def _remote_code_keys(value: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in _REMOTE_CODE_KEYS:
                found.append(where)
            found.extend(_remote_code_keys(inner, where))
    return found


def _openvla_layout() -> Any:
    """tools.openvla_layout when it is installed in this checkout, else None."""
    try:
        from tools import openvla_layout
    except ImportError:
        return None
    return openvla_layout


def is_openvla(config: dict[str, Any]) -> bool:
    layout = _openvla_layout()
    return bool(layout is not None and layout.is_openvla_config(config))


def resolve_model_class(config: dict[str, Any]) -> Any:
    """The transformers class that builds this config (no instance made); UnsafeModelError when the
    model would need code transformers does not ship."""
    import transformers
    from transformers import PreTrainedModel
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    model_type = config["model_type"]
    architectures = config.get("architectures")
    if architectures is not None:
        if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
            raise InvalidModelError("config.json's 'architectures' must be a list of class names")
    if architectures:
        name = architectures[0]
        cls = getattr(transformers, name, None) if name.isidentifier() else None
        if not (
            isinstance(cls, type)
            and issubclass(cls, PreTrainedModel)
            and cls.__module__.startswith("transformers.models.")
        ):
            raise UnsafeModelError(
                f"config.json names the class '{name}', which transformers does not provide: the model "
                "needs its own remote code, and robopt never runs it",
                details=_REMOTE_CODE_HINT,
            )
        expected = getattr(cls.config_class, "model_type", None)
        if expected and expected != model_type:
            raise InvalidModelError(
                f"config.json's model_type '{model_type}' is not the type of its class {name} ('{expected}')"
            )
        return cls
    if model_type not in CONFIG_MAPPING_NAMES:
        raise UnsafeModelError(
            f"config.json's model_type '{model_type}' is not one transformers provides: the model needs its "
            "own remote code, and robopt never runs it",
            details=_REMOTE_CODE_HINT,
        )
    if model_type not in MODEL_MAPPING_NAMES:
        raise InvalidModelError(
            f"transformers has no base model class for model_type '{model_type}'; name the class in "
            "config.json's 'architectures'"
        )
    return transformers.AutoModel


def _read_config(root: Path, files: dict[str, int]) -> dict[str, Any]:
    if CONFIG_NAME not in files:
        nested = sorted(f for f in files if f.endswith("/" + CONFIG_NAME))
        hint = f" (found {nested[0]}: put the model's files at the top of the archive)" if nested else ""
        raise InvalidModelError(
            f"the model directory has no config.json at its top{hint}; a Hugging Face transformers "
            "directory holds config.json and its weights (model.safetensors, or shards with "
            "model.safetensors.index.json)"
        )
    config = read_json_file(root / CONFIG_NAME, what="config.json")
    if not isinstance(config, dict):
        raise InvalidModelError("config.json is not a JSON object")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InvalidModelError("config.json has no 'model_type'; it is not a transformers model config")
    return config


def _check_index(
    root: Path, files: dict[str, int], index_name: str, suffix: str
) -> tuple[list[str], dict[str, str]]:
    """The shards an index names and its weight_map, checked against the directory's files."""
    index = read_json_file(root / index_name, what=index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidModelError(f"{index_name} has no 'weight_map' (tensor name -> shard file)")
    if not isinstance(index.get("metadata"), dict):
        # transformers reads it unconditionally: known now, so refused now rather than at load.
        raise InvalidModelError(f"{index_name} has no 'metadata' object (save_pretrained writes one)")
    shards: list[str] = []
    for tensor, shard in weight_map.items():
        if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in ("", ".", ".."):
            raise UnsafeModelError(
                f"{index_name} maps tensor '{tensor}' to {shard!r}, which is not a file name"
            )
        if not shard.endswith(suffix):
            raise InvalidModelError(f"{index_name} maps tensor '{tensor}' to '{shard}', not a {suffix} shard")
        if shard not in shards:
            shards.append(shard)
    missing = [s for s in shards if s not in files]
    if missing:
        raise InvalidModelError(
            f"{index_name} names shard(s) that are not in the directory: {', '.join(missing[:5])}"
        )
    extra = sorted(f for f in files if _SHARD.match(f) and f.endswith(suffix) and f not in shards)
    if extra:
        raise InvalidModelError(
            f"the directory holds shard(s) that {index_name} does not name: {', '.join(extra[:5])}"
        )
    return shards, {str(k): v for k, v in weight_map.items()}


def _match_index(index_name: str, weight_map: dict[str, str], held: dict[str, set[str]]) -> None:
    """Every tensor where the index says, and nothing more in the shards."""
    for tensor, shard in weight_map.items():
        if tensor not in held[shard]:
            elsewhere = [s for s, names in held.items() if tensor in names]
            where = f"; it is in {elsewhere[0]}" if elsewhere else "; no shard holds it"
            raise InvalidModelError(
                f"{index_name} puts tensor '{tensor}' in {shard}, which does not hold it{where}"
            )
    for shard, names in held.items():
        unlisted = sorted(names - set(weight_map))
        if unlisted:
            raise InvalidModelError(
                f"shard {shard} holds tensor(s) {index_name} does not list: {', '.join(unlisted[:5])}"
            )
        moved = sorted(n for n in names if weight_map.get(n) not in (None, shard))
        if moved:
            raise InvalidModelError(
                f"shard {shard} holds '{moved[0]}', which {index_name} puts in {weight_map[moved[0]]}"
            )


def _safetensors_tensors(root: Path, name: str) -> dict[str, tuple[list[int], str]]:
    from tools.formats import check_safetensors_file

    header = check_safetensors_file(root / name, what=name)
    return {k: (list(v["shape"]), str(v["dtype"])) for k, v in header.items() if k != "__metadata__"}


def _pickled_tensors(root: Path, name: str) -> dict[str, tuple[list[int], str]]:
    from tools.formats import check_pickled_weights

    state = check_pickled_weights(root / name, what=name)
    return {k: ([int(d) for d in v.shape], str(v.dtype).removeprefix("torch.")) for k, v in state.items()}


def _read_weights(
    root: Path, files: dict[str, int], notes: list[str]
) -> tuple[str, list[str], dict[str, tuple[list[int], str]]]:
    if SAFETENSORS_INDEX in files and SAFETENSORS_NAME in files:
        raise InvalidModelError(
            f"the directory holds both {SAFETENSORS_NAME} and a sharded {SAFETENSORS_INDEX}; keep one"
        )
    if SAFETENSORS_INDEX in files or SAFETENSORS_NAME in files:
        if PICKLE_NAME in files or PICKLE_INDEX in files:
            notes.append("pickled weights beside the safetensors are kept but never loaded")
        if SAFETENSORS_NAME in files:
            return "safetensors", [SAFETENSORS_NAME], _safetensors_tensors(root, SAFETENSORS_NAME)
        shards, weight_map = _check_index(root, files, SAFETENSORS_INDEX, ".safetensors")
        per_shard = {s: _safetensors_tensors(root, s) for s in shards}
        _match_index(SAFETENSORS_INDEX, weight_map, {s: set(t) for s, t in per_shard.items()})
        return "safetensors_sharded", shards, {k: v for t in per_shard.values() for k, v in t.items()}
    if PICKLE_INDEX in files and PICKLE_NAME in files:
        raise InvalidModelError(
            f"the directory holds both {PICKLE_NAME} and a sharded {PICKLE_INDEX}; keep one"
        )
    if PICKLE_NAME in files:
        return "pytorch_bin", [PICKLE_NAME], _pickled_tensors(root, PICKLE_NAME)
    if PICKLE_INDEX in files:
        shards, weight_map = _check_index(root, files, PICKLE_INDEX, ".bin")
        per_shard = {s: _pickled_tensors(root, s) for s in shards}
        _match_index(PICKLE_INDEX, weight_map, {s: set(t) for s, t in per_shard.items()})
        return "pytorch_bin_sharded", shards, {k: v for t in per_shard.values() for k, v in t.items()}
    raise InvalidModelError(
        "the model directory holds no weights: model.safetensors, shards with model.safetensors.index.json, "
        "or pytorch_model.bin"
    )


def inspect_directory(root: Path) -> DirectoryLayout:
    """Validate a model directory as data (see the module docstring); nothing is instantiated."""
    root = Path(root)
    if not root.is_dir():
        raise InvalidModelError(f"no model directory at {root.name}")
    files = list_files(root)
    config = _read_config(root, files)
    openvla = is_openvla(config)
    model_class: str | None = None
    if not openvla:
        remote = _remote_code_keys(config)
        if remote:
            raise UnsafeModelError(
                f"config.json asks for the model's own code ({', '.join(remote)}): the model needs remote "
                "code, and robopt never runs it",
                details=_REMOTE_CODE_HINT,
            )
        cls = resolve_model_class(config)
        model_class = cls.__name__
    if "adapter_config.json" in files:
        raise InvalidModelError(
            "the directory is a PEFT adapter (adapter_config.json); merge it into its base model "
            "(model.merge_and_unload()) and upload the merged model"
        )
    notes: list[str] = []
    if any(f.endswith(".py") for f in files):
        notes.append("Python files in the directory are kept but never imported or run")
    weights, weight_files, tensors = _read_weights(root, files, notes)
    return DirectoryLayout(
        root=root,
        config=config,
        weights=weights,
        weight_files=weight_files,
        tensors=tensors,
        files=files,
        model_class=model_class,
        openvla=openvla,
        notes=notes,
    )


def validate_model_directory(root: Path, *, extension: str = "") -> Any:
    """A FormatReport (format `hf_directory`) of a validated model directory, from headers only."""
    from tools.formats import FormatReport

    layout = inspect_directory(root)
    dtypes = sorted({dtype for _shape, dtype in layout.tensors.values()})
    other = layout.other_files
    return FormatReport(
        format="hf_directory",
        extension=extension,
        size_bytes=layout.total_bytes,
        tensor_count=len(layout.tensors),
        parameter_count=sum(math.prod(shape) for shape, _dtype in layout.tensors.values()),
        details={
            "layout": "openvla" if layout.openvla else "transformers",
            "model_type": layout.config.get("model_type"),
            "model_class": layout.model_class,
            "weights": layout.weights,
            "weight_files": layout.weight_files,
            "dtypes": dtypes,
            "files": len(layout.files),
            "other_files": {f: layout.files[f] for f in other[:100]},
            "runtime": "transformers (from_pretrained, no remote code)",
            **({"notes": layout.notes} if layout.notes else {}),
        },
    )


# ---------------------------------------------------------------------------------------------
# loading


class TransformersModule(torch.nn.Module):
    """A transformers model called with its inputs in signature order, giving a dict of its tensor
    outputs (a ModelOutput's tensor fields; caches and None fields dropped), which every tool reads.

    The subclasses below name their arguments (the common signatures), so exporters that bind inputs
    to the forward's parameters (torch.export's dynamic shapes) see one parameter per input; this
    base class takes any names positionally.
    """

    def __init__(self, model: Any, input_names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        params = inspect.signature(model.forward).parameters
        self.call_options: dict[str, Any] = {"return_dict": True}
        if "use_cache" in params:
            self.call_options["use_cache"] = False  # no KV cache object among the outputs

    def run(self, args: tuple[Any, ...]) -> dict[str, Any]:
        out = self.model(**dict(zip(self.input_names, args, strict=True)), **self.call_options)
        return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}

    def forward(self, *args: Any) -> dict[str, Any]:
        return self.run(args)


class TextModule(TransformersModule):
    def forward(self, input_ids: Any, attention_mask: Any) -> dict[str, Any]:
        return self.run((input_ids, attention_mask))


class TextPairModule(TransformersModule):
    def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> dict[str, Any]:
        return self.run((input_ids, attention_mask, token_type_ids))


class TokenIdsModule(TransformersModule):
    def forward(self, input_ids: Any) -> dict[str, Any]:
        return self.run((input_ids,))


class VisionModule(TransformersModule):
    def forward(self, pixel_values: Any) -> dict[str, Any]:
        return self.run((pixel_values,))


_NAMED_MODULES: dict[tuple[str, ...], type[TransformersModule]] = {
    ("input_ids", "attention_mask"): TextModule,
    ("input_ids", "attention_mask", "token_type_ids"): TextPairModule,
    ("input_ids",): TokenIdsModule,
    ("pixel_values",): VisionModule,
}


def wrap_transformers_model(model: Any, input_names: list[str]) -> TransformersModule:
    """`model` as a TransformersModule taking `input_names` in that order."""
    return _NAMED_MODULES.get(tuple(input_names), TransformersModule)(model, input_names)


def transformers_model(module: Any) -> Any:
    """The transformers PreTrainedModel inside a handle's model (a TransformersModule), or None."""
    inner = getattr(module, "model", None)
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return None
    return inner if isinstance(inner, PreTrainedModel) else None


@dataclass
class LoadedDirectory:
    module: Any
    inputs: list[InputSpec]
    argument_names: list[str]
    missing: list[str]
    notes: list[str]
    architecture: ArchitectureRef | None = None


def load_model_directory(
    root: Path, *, device: str = "cpu", input_names: list[str] | None = None
) -> LoadedDirectory:
    """Build the directory's model with transformers (no remote code) and read its signature.

    `input_names` (a user's signature) replaces the default inputs when every name is an argument of
    the model's forward.
    """
    layout = inspect_directory(root)
    if layout.openvla:
        return _load_openvla(layout, device)
    from transformers.utils import logging as hf_logging

    cls = resolve_model_class(layout.config)
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(
            str(layout.root),
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=layout.safetensors,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        raise InvalidModelError(f"transformers could not build the model from the directory: {exc}") from exc
    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} ({', '.join(missing[:4])})")
        if mismatched:
            parts.append(f"{len(mismatched)} with other shapes ({mismatched[0]})")
        raise InvalidModelError(
            f"the weights do not fit config.json's class {cls.__name__}: {'; '.join(parts)}",
            details="the config's 'architectures' class must be the one the weights were saved from",
        )
    notes = list(layout.notes)
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        notes.append(
            f"{len(unexpected)} tensor(s) the class does not use were ignored ({', '.join(unexpected[:3])})"
        )
    model.eval()
    if device != "cpu":
        model = model.to(device)
    inputs, names, missing_sig, sig_notes = directory_signature(model, layout)
    if input_names:
        params = inspect.signature(model.forward).parameters
        if all(n in params for n in input_names):
            names = list(input_names)
    module = wrap_transformers_model(model, names)
    return LoadedDirectory(module, inputs, names, missing_sig, notes + sig_notes)


def _load_openvla(layout: DirectoryLayout, device: str) -> LoadedDirectory:
    from tools.architectures import canonical_ref, input_specs

    openvla = _openvla_layout()
    module, ref = openvla.load_openvla_directory(layout.root, layout.config, device)
    ref = canonical_ref(ref)
    specs = input_specs(ref)
    return LoadedDirectory(
        module.eval(),
        specs,
        [s.name for s in specs],
        [],
        [
            *layout.notes,
            "an OpenVLA checkpoint, built as robopt's vla architecture (its own code is not run)",
        ],
        architecture=ref,
    )


def directory_signature(
    model: Any, layout: DirectoryLayout
) -> tuple[list[InputSpec], list[str], list[str], list[str]]:
    """(inputs, argument names, what is missing, notes) from the model class and its config.

    Text models (`main_input_name` input_ids): int64 ids in [0, vocab_size) and an attention mask of
    ones, the sequence axis dynamic (synthesized at DEFAULT_SEQUENCE tokens) unless
    `max_position_embeddings` is shorter. Vision models (pixel_values): [N, num_channels, H, W] at the
    configured image size, values in the range the directory's image processor produces.
    """
    config = model.config
    main = getattr(model, "main_input_name", "input_ids")
    params = inspect.signature(model.forward).parameters
    notes: list[str] = []
    if main == "input_ids":
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        vocab = getattr(text, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 1:
            return [], ["input_ids"], ["'input_ids': the config states no vocab_size"], notes
        longest = getattr(text, "max_position_embeddings", None)
        seq: int | None = None
        if isinstance(longest, int) and 0 < longest < DEFAULT_SEQUENCE:
            seq = longest
        notes.append(
            f"token ids in [0, {vocab}) (the vocabulary); sequence axis "
            + (
                f"fixed at {seq} (max_position_embeddings)"
                if seq
                else f"dynamic, synthesized at {DEFAULT_SEQUENCE}"
            )
        )
        specs = [InputSpec(name="input_ids", shape=[None, seq], dtype="int64", low=0, high=vocab)]
        if "attention_mask" in params:
            specs.append(InputSpec(name="attention_mask", shape=[None, seq], dtype="int64", low=1, high=2))
        return specs, [s.name for s in specs], [], notes
    if main == "pixel_values":
        vision = getattr(config, "vision_config", None) or config
        channels = getattr(vision, "num_channels", 3)
        height, width, where = _image_size(vision, layout)
        low, high, range_note = _pixel_range(layout)
        notes.append(f"images {channels}x{height}x{width} ({where}); {range_note}")
        spec = InputSpec(
            name="pixel_values",
            shape=[None, int(channels), height, width],
            dtype="float32",
            low=low,
            high=high,
        )
        return [spec], ["pixel_values"], [], notes
    return (
        [],
        [main],
        [
            f"'{main}': robopt reads the signature of text (input_ids) and vision (pixel_values) models; "
            "give an input_signature for this one"
        ],
        notes,
    )


def _image_size(vision: Any, layout: DirectoryLayout) -> tuple[int, int, str]:
    size = getattr(vision, "image_size", None)
    if isinstance(size, int) and size > 0:
        return size, size, "config image_size"
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1]), "config image_size"
    processor = _preprocessor(layout)
    for key in ("crop_size", "size"):
        value = processor.get(key)
        if isinstance(value, int) and value > 0:
            return value, value, f"{PREPROCESSOR_NAME} {key}"
        if isinstance(value, dict):
            h, w = value.get("height"), value.get("width")
            if isinstance(h, int) and isinstance(w, int):
                return h, w, f"{PREPROCESSOR_NAME} {key}"
            edge = value.get("shortest_edge")
            if isinstance(edge, int) and edge > 0:
                return edge, edge, f"{PREPROCESSOR_NAME} {key}.shortest_edge"
    return DEFAULT_IMAGE_SIDE, DEFAULT_IMAGE_SIDE, "no size in the config: the common 224"


def _pixel_range(layout: DirectoryLayout) -> tuple[float, float, str]:
    """The range of pixel values the directory's image processor produces (rescale to [0, 1], then
    (x - mean) / std); [0, 1] when there is no processor config."""
    processor = _preprocessor(layout)
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if (
        processor.get("do_normalize", True)
        and isinstance(mean, list)
        and isinstance(std, list)
        and len(mean) == len(std)
        and mean
        and all(isinstance(v, (int, float)) for v in [*mean, *std])
        and all(s > 0 for s in std)
    ):
        low = min((0.0 - m) / s for m, s in zip(mean, std, strict=True))
        high = max((1.0 - m) / s for m, s in zip(mean, std, strict=True))
        return round(low, 4), round(high, 4), f"pixel values in [{low:.2f}, {high:.2f}] ({PREPROCESSOR_NAME})"
    return 0.0, 1.0, "pixel values in [0, 1] (no image normalization stated)"


def _preprocessor(layout: DirectoryLayout) -> dict[str, Any]:
    if PREPROCESSOR_NAME not in layout.files:
        return {}
    value = read_json_file(layout.root / PREPROCESSOR_NAME, what=PREPROCESSOR_NAME)
    return value if isinstance(value, dict) else {}
