"""A zoo of real library architectures (from `transformers`) that the toolbox did not design.

Tests and benchmarks use it to check that loading, quantization, pruning and export work on models
as users bring them: a Hugging Face class built from a small config (random weights, nothing is
downloaded), wrapped in the few lines a robotics engineer writes so that the exporter sees positional
tensors in and one tensor out, then exported the way such a user would (`torch.onnx.export`,
`torch.jit.trace` + `torch.jit.save`, `torch.export.export` + `torch.export.save`) with no
robopt-specific metadata.

    zoo = build("llama")                      # ZooModel: module (eval), inputs, output kind, sizes
    path = export_zoo("llama", "onnx", tmp)   # tmp / "llama.onnx"
    out = run_plain(path, zoo.inputs)         # ONNX Runtime / torch.jit.load / torch.export.load

- bert   BertModel, 405k params (1.6 MB fp32): input_ids, attention_mask [B, 16] -> embedding [B, 128]
- llama  LlamaForCausalLM, 558k (2.2 MB): input_ids, attention_mask [B, 16] -> logits [B, 16, 1024]
- vit    ViTForImageClassification, 294k (1.2 MB): pixel_values [B, 3, 32, 32] -> logits [B, 10]
- resnet ResNetForImageClassification, 498k (2.0 MB): pixel_values [B, 3, 32, 32] -> logits [B, 10]
- dinov2 Dinov2Model, 293k (1.2 MB): pixel_values [B, 3, 32, 32] -> embedding [B, 128]
- siglip SiglipVisionModel, 424k (1.7 MB): pixel_values [B, 3, 32, 32] -> embedding [B, 128]

Token ids and masks are int64 (ids in [0, 1024), masks of ones), images float32 in [0, 1].
Text models get a dynamic batch and sequence axis, image models a dynamic batch axis (ONNX
`dynamic_axes`, `torch.export.Dim`); a traced TorchScript file is as dynamic as its trace is
(all six run at other batch sizes and sequence lengths). Exporters: ONNX with the TorchScript-based
`torch.onnx.export(dynamo=False)`, opset 17; TorchScript with `torch.jit.trace`; `.pt2` with
`torch.export.export` (strict=False, the default). Quirks a tool meets here, as with real files:
DINOv2's ONNX graph holds a bicubic `Resize` of the position embeddings (transformers always
interpolates them while tracing) and its output's second axis has no static size; a traced
TorchScript file's schema names its inputs but gives no shapes or dtypes (the archive's
`traced_inputs.pkl` holds the example tensors).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

ZOO_FORMATS = ("onnx", "torchscript", "pt2")
ZooFormat = Literal["onnx", "torchscript", "pt2"]
OutputKind = Literal["embedding", "logits"]

BATCH = 2
SEQ_LEN = 16
IMAGE_SIZE = 32
SEED = 0
ONNX_OPSET = 17
_log = logging.getLogger(__name__)
_EXTENSIONS = {"onnx": ".onnx", "torchscript": ".pt", "pt2": ".pt2"}


# --------------------------------------------------------------------------------------------------
# The users' wrappers: positional tensors in, one tensor out.
# --------------------------------------------------------------------------------------------------


class TextEmbedder(nn.Module):
    """A BERT sentence embedder: mean of the last hidden state over the attended tokens."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class CausalLM(nn.Module):
    """A decoder's next-token logits for every position, no KV cache."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


class ImageClassifier(nn.Module):
    """An image classifier's logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class ImageEmbedder(nn.Module):
    """A vision tower's pooled embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).pooler_output


# --------------------------------------------------------------------------------------------------
# The models.
# --------------------------------------------------------------------------------------------------


@dataclass
class ZooModel:
    """One zoo architecture, built: the wrapped module (eval mode) and realistic example inputs."""

    name: str
    module: nn.Module
    input_names: list[str]
    inputs: dict[str, np.ndarray]  # batch BATCH, in `input_names` order
    output_kind: OutputKind
    output_shape: tuple[int, ...]  # for the example inputs
    hf_class: str
    config: Any  # the transformers config it was built from
    # Axes that may change: input name -> {axis: label}. ONNX and .pt2 exports make them dynamic.
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Integer inputs' valid range [low, high), e.g. token ids within the vocabulary.
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    description: str = ""

    @property
    def kind(self) -> Literal["text", "image"]:
        return "text" if "input_ids" in self.input_names else "image"

    @property
    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def fp32_bytes(self) -> int:
        return 4 * self.parameter_count

    def example_args(self, inputs: Mapping[str, np.ndarray] | None = None) -> tuple[torch.Tensor, ...]:
        inputs = self.inputs if inputs is None else inputs
        return tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names)

    def reference(self, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """The eager module's output (float32 numpy) on `inputs` (default: the example inputs)."""
        with torch.no_grad():
            out = self.module(*self.example_args(inputs))
        return out.detach().float().numpy()

    def make_inputs(
        self, batch: int = BATCH, seq_len: int = SEQ_LEN, seed: int = SEED
    ) -> dict[str, np.ndarray]:
        """Fresh realistic inputs of another batch size (and sequence length, for text models)."""
        rng = np.random.default_rng(seed)
        if self.kind == "text":
            low, high = self.input_ranges["input_ids"]
            return {
                "input_ids": rng.integers(low, high, size=(batch, seq_len), dtype=np.int64),
                "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
            }
        return {"pixel_values": rng.random((batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)}


def _text_axes() -> dict[str, dict[int, str]]:
    return {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}}


def _image_axes() -> dict[str, dict[int, str]]:
    return {"pixel_values": {0: "batch"}}


def _build_bert() -> tuple[nn.Module, Any, str]:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=1024,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=64,
        type_vocab_size=2,
        attn_implementation="eager",
    )
    return TextEmbedder(BertModel(config, add_pooling_layer=False)), config, "BertModel"


def _build_llama() -> tuple[nn.Module, Any, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation="eager",
    )
    return CausalLM(LlamaForCausalLM(config)), config, "LlamaForCausalLM"


def _build_vit() -> tuple[nn.Module, Any, str]:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        num_labels=10,
        attn_implementation="eager",
    )
    return ImageClassifier(ViTForImageClassification(config)), config, "ViTForImageClassification"


def _build_resnet() -> tuple[nn.Module, Any, str]:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3,
        embedding_size=32,
        hidden_sizes=[32, 64, 96, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        num_labels=10,
    )
    return ImageClassifier(ResNetForImageClassification(config)), config, "ResNetForImageClassification"


def _build_dinov2() -> tuple[nn.Module, Any, str]:
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        mlp_ratio=2,  # intermediate 256
        attn_implementation="eager",
    )
    return ImageEmbedder(Dinov2Model(config)), config, "Dinov2Model"


def _build_siglip() -> tuple[nn.Module, Any, str]:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        attn_implementation="eager",
    )
    return ImageEmbedder(SiglipVisionModel(config)), config, "SiglipVisionModel"


@dataclass(frozen=True)
class _Spec:
    builder: Callable[[], tuple[nn.Module, Any, str]]
    kind: Literal["text", "image"]
    output_kind: OutputKind
    description: str


_SPECS: dict[str, _Spec] = {
    "bert": _Spec(_build_bert, "text", "embedding", "BERT text encoder, mean-pooled sentence embedding"),
    "llama": _Spec(_build_llama, "text", "logits", "Llama decoder (GQA, RoPE, SwiGLU), next-token logits"),
    "vit": _Spec(_build_vit, "image", "logits", "ViT image classifier, CLS-token logits"),
    "resnet": _Spec(_build_resnet, "image", "logits", "ResNet CNN (basic blocks, batch norm), class logits"),
    "dinov2": _Spec(_build_dinov2, "image", "embedding", "DINOv2 backbone, layer-normed CLS embedding"),
    "siglip": _Spec(_build_siglip, "image", "embedding", "SigLIP vision tower, attention-pooled embedding"),
}
ZOO_MODELS: tuple[str, ...] = tuple(_SPECS)


def build(name: str) -> ZooModel:
    """Build zoo model `name` (seeded, so every call gives the same weights and inputs)."""
    if name not in _SPECS:
        raise KeyError(f"unknown zoo model '{name}'; choose one of {', '.join(ZOO_MODELS)}")
    spec = _SPECS[name]
    torch.manual_seed(SEED)
    with _quiet():
        module, config, hf_class = spec.builder()
    module.eval()
    text = spec.kind == "text"
    zoo = ZooModel(
        name=name,
        module=module,
        input_names=["input_ids", "attention_mask"] if text else ["pixel_values"],
        inputs={},
        output_kind=spec.output_kind,
        output_shape=(),
        hf_class=hf_class,
        config=config,
        dynamic_axes=_text_axes() if text else _image_axes(),
        input_ranges={"input_ids": (0, int(config.vocab_size))} if text else {},
        description=spec.description,
    )
    zoo.inputs = zoo.make_inputs()
    zoo.output_shape = tuple(zoo.reference().shape)
    return zoo


def zoo_cases() -> Iterator[tuple[str, str]]:
    """Every (model name, format) pair."""
    for name in ZOO_MODELS:
        for fmt in ZOO_FORMATS:
            yield name, fmt


# --------------------------------------------------------------------------------------------------
# Export, as a user would, and run with the plain runtimes.
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (deprecation notes, tracer warnings, torch.export's logs)."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._dynamo", "torch.onnx", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_zoo(name: str | ZooModel, fmt: str, directory: Path | str) -> Path:
    """Write zoo model `name` as `fmt` ("onnx", "torchscript" or "pt2") into `directory`; the file's path.

    Pass a `ZooModel` from `build` to skip building it again.
    """
    if fmt not in ZOO_FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(ZOO_FORMATS)}")
    zoo = build(name) if isinstance(name, str) else name
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{zoo.name}{_EXTENSIONS[fmt]}"
    args = zoo.example_args()
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            _export_onnx(zoo, args, path)
        elif fmt == "torchscript":
            traced = torch.jit.trace(zoo.module, args)
            torch.jit.save(traced, str(path))
        else:
            _export_pt2(zoo, args, path)
    return path


def _export_onnx(zoo: ZooModel, args: tuple[torch.Tensor, ...], path: Path) -> None:
    dynamic_axes: dict[str, dict[int, str]] = {**zoo.dynamic_axes, "output": {0: "batch"}}
    if zoo.kind == "text" and zoo.output_kind == "logits":
        dynamic_axes["output"] = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        zoo.module,
        args,
        str(path),
        dynamo=False,
        opset_version=ONNX_OPSET,
        input_names=zoo.input_names,
        output_names=["output"],
        dynamic_axes=dynamic_axes,
    )


def _export_pt2(zoo: ZooModel, args: tuple[torch.Tensor, ...], path: Path) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    seq = Dim("sequence", min=1, max=int(getattr(zoo.config, "max_position_embeddings", 64)))
    dims = {"batch": batch, "sequence": seq}
    shapes = {
        n: {axis: dims[label] for axis, label in zoo.dynamic_axes.get(n, {}).items()} for n in zoo.input_names
    }
    try:
        program = torch.export.export(zoo.module, args, dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - as a user would, fall back to a static export
        _log.warning(
            "zoo %s: torch.export with dynamic %s failed (%s); exporting static shapes",
            zoo.name,
            sorted(dims),
            exc,
        )
        program = torch.export.export(zoo.module, args)
    torch.export.save(program, str(path))


def run_plain(path: Path | str, inputs: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> np.ndarray:
    """Run a model file with its plain runtime on numpy `inputs` (in input order); output as float32.

    ONNX: an ONNX Runtime CPU session, fed by name when the names match its inputs, else in order.
    `.pt` (TorchScript): `torch.jit.load`. `.pt2`: `torch.export.load(...).module()`. Arrays are
    passed as they are (no dtype casts), so a file whose signature changed fails here as a user's
    code would. A tuple / list / dict output gives its first tensor.
    """
    path = Path(path)
    ext = path.suffix.lower()
    arrays = list(inputs.values()) if isinstance(inputs, Mapping) else list(inputs)
    if ext == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        if isinstance(inputs, Mapping) and set(names) <= set(inputs):
            feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
        else:
            if len(arrays) < len(names):
                raise ValueError(f"'{path.name}' takes {len(names)} inputs {names}, got {len(arrays)}")
            feed = {n: np.ascontiguousarray(a) for n, a in zip(names, arrays, strict=False)}
        return np.asarray(session.run(None, feed)[0]).astype(np.float32)
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    if ext in (".pt", ".pth"):
        module: Any = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    elif ext == ".pt2":
        module = torch.export.load(str(path)).module()
    else:
        raise ValueError(f"run_plain runs .onnx, .pt (TorchScript) and .pt2 files, not '{path.name}'")
    with torch.no_grad():
        out = module(*tensors)
    return _first_tensor(out).detach().float().cpu().numpy()


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return _first_tensor(next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if hasattr(out, "to_tuple"):  # a transformers ModelOutput
        return _first_tensor(out.to_tuple()[0])
    raise TypeError(f"the model returned {type(out).__name__}, not a tensor")


def archive_entries(path: Path | str) -> list[str]:
    """The names inside a TorchScript / .pt2 zip archive (empty for a non-zip file such as ONNX)."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return []
    with zipfile.ZipFile(path) as zf:
        return zf.namelist()


def onnx_metadata(path: Path | str) -> dict[str, str]:
    """An ONNX file's metadata_props (a plain torch.onnx.export writes none)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
