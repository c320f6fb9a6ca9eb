"""Argument models of the tools: one pydantic model per tool.

The tools validate their arguments against these (`check_arguments`), the registry turns them into the
LLM's tool definitions and validates planner calls with them, so a direct Python call obeys the same
ranges and enums as an LLM's. This module imports no tool, so every tool can import it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tools.errors import InvalidArgumentError

QuantMethod = Literal[
    "dynamic_int8",
    "weight_only_int8",
    "weight_only_int4",
    "bnb_int8",
    "bnb_nf4",
    "fp16",
    "bf16",
    "static_int8",
    "fp8_weight_only",
    "fp8_dynamic",
]
LayerType = Literal["Linear", "Conv1d", "Conv2d", "Conv3d", "Embedding", "MatMul", "Gemm", "Conv", "Gather"]
_PATTERNS = (
    "fnmatch patterns on layer names: torch module qualified names (e.g. 'decoder.layers.*.mlp.*') or ONNX "
    "node / weight initializer names (e.g. '/head/*')."
)


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizeArgs(_Args):
    """Lower the precision of the model's weights (and activations for the int8 methods)."""

    method: QuantMethod = Field(
        description=(
            "dynamic_int8: int8 weights, activations quantized at run time (CPU; ONNX Runtime: per-channel "
            "MatMul weights and int8 embedding tables, ~4x smaller). "
            "weight_only_int8: int8 weights per channel, float compute (torch; on ONNX Runtime, with "
            "backend='onnxruntime' or an ONNX model: int8 weights behind DequantizeLinear, folded into float "
            "weights when the session loads, so it runs at the float graph's speed, 4x smaller on disk). "
            "weight_only_int4: 4-bit weights in blocks (~7x smaller Linear/MatMul weights): on ONNX Runtime "
            "(ONNX models, TorchScript / pt2 files, or backend='onnxruntime') MatMulNBits block-wise "
            "weights and 4-bit embedding tables, on CPU; on torch modules torchao int4 (CUDA GPU only). "
            "bnb_int8 / bnb_nf4: bitsandbytes LLM.int8 / NF4 Linear layers (CUDA GPU only). "
            "fp16 / bf16: half-precision weights and compute (2x smaller; bf16 for torch only; ONNX keeps "
            "float32 inputs/outputs and float32 where fp16 would overflow). "
            "static_int8: int8 weights and activations calibrated on the evaluation data (ONNX Runtime QDQ; "
            "torch models are exported to ONNX). "
            "fp8_weight_only / fp8_dynamic: torchao float8 (e4m3) weights, bf16 compute / float8 activations "
            "too (CUDA GPUs with float8 kernels only: Hopper H100/H200 or Ada, compute capability 8.9+)."
        )
    )
    include: list[str] | None = Field(
        default=None, description=f"Only quantize layers matching one of these {_PATTERNS} Omit for all."
    )
    exclude: list[str] | None = Field(
        default=None,
        description=f"Keep layers matching one of these in full precision; {_PATTERNS} "
        "Use it to fall back sensitive layers (the output head, the first layer).",
    )
    layer_types: list[LayerType] | None = Field(
        default=None,
        description="Only quantize layers of these types (torch module classes or ONNX op types; Embedding "
        "is an ONNX Gather of a weight table). Default: Linear layers (static_int8: Linear and convolutions; "
        "on ONNX Runtime dynamic_int8, static_int8 and weight_only_int4 also quantize embedding tables).",
    )
    calibration_samples: int = Field(
        default=64, ge=1, le=4096, description="Samples used to calibrate activation ranges (static_int8)."
    )
    seed: int = Field(default=0, ge=0, description="Random seed.")
    backend: Literal["torch", "onnxruntime"] | None = Field(
        default=None,
        description="Omit to keep the model's runtime. 'onnxruntime' exports a torch model to ONNX and "
        "quantizes it there (dynamic_int8, static_int8, weight_only_int4, fp16): usually the fastest on CPU, "
        "but the result is an ONNX model, on which structured pruning removes MLP hidden and conv channels "
        "only (no attention heads).",
    )
    block_size: Literal[32, 64, 128] | None = Field(
        default=None,
        description="weight_only_int4 on ONNX Runtime: input channels per quantization block (32: most "
        "accurate, 128: smallest). Omit for 32.",
    )
    accuracy_target: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="Mixed precision on ONNX Runtime: measure what quantizing each layer group costs (one "
        "group at a time, on the evaluation data or synthesized inputs) and keep the costliest groups at "
        "higher precision (float; 8-bit for weight_only_int4) until the accuracy retained reaches this, at "
        "the smallest size. Omit to quantize every selected layer.",
    )
    size_target: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Mixed precision under a size budget: the largest size the result may have, as a "
        "fraction of the current model's size on disk (0.25: 4x smaller). Each layer group is measured "
        "alone at each precision the method offers (float and 8-bit; weight_only_int4 also 4-bit and, on "
        "ONNX Runtime, a layer's output channels split between 4-bit and 8-bit), then the precisions that "
        "fit the budget at the least measured output error are chosen. Torch or ONNX Runtime models; with "
        "accuracy_target only for weight_only_int4 on ONNX Runtime, where it means: whole layers (no "
        "split, a little faster) when they fit and retain accuracy_target.",
    )
    recovery: Literal["none", "qat"] = Field(
        default="none",
        description="qat: quantization-aware training (dynamic_int8, weight_only_int8, weight_only_int4 on "
        "torch models): the layers are fake-quantized as the kernel will quantize them and distilled from "
        "the original model before the same post-training quantization; recovers accuracy the plain "
        "method loses, at the cost of training time (recovery_steps / recovery_time_s).",
    )
    recovery_steps: int = Field(default=300, ge=1, le=100_000, description="qat: optimizer steps at most.")
    recovery_time_s: float | None = Field(
        default=30.0, gt=0.0, le=86_400.0, description="qat: seconds of training at most (null: steps only)."
    )
    recovery_learning_rate: float = Field(
        default=1e-4, gt=0.0, le=1.0, description="qat: Adam's learning rate (halved every 200 steps)."
    )


class PruneArgs(_Args):
    """Remove weights: zeros (magnitude), whole channels/neurons/heads (structured) or 2:4 patterns."""

    method: Literal["magnitude", "structured", "semi_structured_2_4"] = Field(
        description=(
            "magnitude: zero the smallest weights (unstructured; smaller only once compressed, no speedup "
            "by itself). structured: remove whole channels, neurons or attention heads and resize the layers "
            "(fewer parameters, really faster; hurts accuracy more). semi_structured_2_4: 2 of every 4 "
            "weights zero with sparse kernels (CUDA GPU only)."
        )
    )
    amount: float = Field(
        gt=0.0, lt=1.0, description="Fraction of the selected weights (or channels) to remove, e.g. 0.3."
    )
    scope: Literal["global", "per_layer"] = Field(
        default="global",
        description="global: one threshold across all selected layers; per_layer: the same fraction in each.",
    )
    include: list[str] | None = Field(
        default=None, description=f"Only prune layers matching one of these {_PATTERNS} Omit for all."
    )
    exclude: list[str] | None = Field(
        default=None, description=f"Never prune layers matching one of these; {_PATTERNS}"
    )
    seed: int = Field(default=0, ge=0, description="Random seed.")


DistillLoss = Literal["auto", "kl", "mse", "cosine"]


class DistillArgs(_Args):
    """Recover the accuracy a compressed candidate lost: train it to reproduce its teacher's outputs."""

    steps: int = Field(default=300, ge=1, le=100_000, description="Optimizer steps at most (one batch each).")
    time_budget_s: float | None = Field(
        default=30.0,
        gt=0.0,
        le=86_400.0,
        description="Wall-clock seconds of training at most (checked before each step); omit (null) for no "
        "time limit (steps only).",
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Samples per step.")
    learning_rate: float = Field(
        default=1e-3, gt=0.0, le=1.0, description="Adam's learning rate (halved every 200 steps)."
    )
    loss: DistillLoss = Field(
        default="auto",
        description="auto: fitted to each output (KL divergence of the softened distributions for logits and "
        "action tokens, mean squared error scaled by the teacher's variance for regressions, 1 - cosine "
        "for embeddings); kl, mse or cosine force one for every float output.",
    )
    temperature: float = Field(
        default=2.0,
        gt=0.0,
        le=20.0,
        description="Softmax temperature of the KL loss (logits, action tokens).",
    )
    augment: bool = Field(
        default=True,
        description="Half of each batch are augmented copies of the data: float inputs with Gaussian noise "
        "(scaled per feature, see `noise`; image inputs also shifted by up to one pixel), integer inputs "
        "(ids) with a tenth of their values resampled within their range. The teacher labels every copy.",
    )
    # Measured on unseen samples (the held-out half the gate scores on): a policy pruned by half and
    # distilled 1000 steps kept 98.7% of its task metric at 0.05 and 99.6% at 0.2.
    noise: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Std of the noise on float inputs, in each feature's std."
    )
    num_samples: int = Field(
        default=512,
        ge=1,
        le=100_000,
        description="Inputs synthesized from the signature when neither model carries evaluation data.",
    )
    seed: int = Field(default=0, ge=0, description="Random seed (batches, augmentation, synthesized inputs).")


class InspectModelArgs(_Args):
    """Profile the model: parameters and bytes per layer type and block, dtypes, input signature, FLOPs,
    quantizable and prunable layers, size on disk. Takes no arguments."""


class BenchmarkArgs(_Args):
    """Time forward passes of the model (warm-up excluded): p50/p90/p99 latency, throughput, memory."""

    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
        description="'cpu', 'cuda' or 'cuda:N'. CUDA needs an NVIDIA GPU on the machine.",
    )
    batch_size: int = Field(default=1, ge=1, le=4096, description="Samples per forward pass.")
    warmup: int = Field(default=10, ge=0, le=10_000, description="Untimed passes before timing.")
    iterations: int = Field(default=100, ge=1, le=100_000, description="Timed passes.")
    num_threads: int | None = Field(
        default=None, ge=1, le=1024, description="torch intra-op threads for the run (CPU); omit to keep."
    )


EvalMetric = Literal[
    "accuracy",
    "action_token_accuracy",
    "within_tolerance",
    "top1_agreement",
    "top5_agreement",
    "kl_divergence",
    "centered_cosine",
    "cosine_similarity",
    "nn_agreement",
    "within_tolerance_of_reference",
    "exact_agreement",
]
EVAL_METRICS_HELP = (
    "With targets: accuracy (class logits), action_token_accuracy (per-token bin logits), within_tolerance "
    "(regression). Without: top1_agreement / top5_agreement (the reference's top class among the model's "
    "top 1 / 5) and kl_divergence (retained = exp(-KL)) for logits; centered_cosine (cosine after removing "
    "the reference's mean), cosine_similarity and nn_agreement (each sample's nearest neighbour in the set "
    "stays the same) for embeddings; within_tolerance_of_reference for regression; exact_agreement for "
    "integer outputs."
)


class EvaluateArgs(_Args):
    """Compare the model with its reference (the version it was optimized from): the task metric when the
    evaluation data has targets, else fidelity with the metric that fits each output (agreement of logits,
    cosine of embeddings, error of regressions); always accuracy_retained."""

    output_kind: Literal["logits", "regression", "action_tokens", "embedding", "labels"] | None = Field(
        default=None,
        description="What the output named by `output` is (else every output); omit to infer it from the "
        "model and the data.",
    )
    metric: EvalMetric | None = Field(
        default=None,
        description="Force this metric, for the output named by `output` or else for every output (omit to "
        f"pick the one that fits each output). {EVAL_METRICS_HELP}",
    )
    output: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Gate on this output (by name; the others are still reported); omit to gate on the "
        "worst-scoring output.",
    )
    tolerance: float = Field(
        default=0.25,
        gt=0.0,
        le=10.0,
        description="Regression: an output counts as right when its RMS error is within this many standard "
        "deviations of the targets (or the reference's outputs).",
    )
    num_samples: int = Field(
        default=256, ge=1, le=100_000, description="Samples synthesized when there is no evaluation data."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Samples per forward pass.")
    seed: int = Field(default=0, ge=0, description="Random seed of synthesized inputs.")


class ExportArgs(_Args):
    """Write the model to a file that loads back with load_model and gives the same outputs."""

    fmt: Literal["onnx", "torchscript", "pt2", "safetensors"] = Field(
        description="onnx: runs in ONNX Runtime (torch int8 models from torch.ao/torchao cannot be exported "
        "to it; bf16 neither). torchscript / pt2: torch models, quantized ones included. safetensors: plain "
        "weights of a registered architecture."
    )
    path: str = Field(min_length=1, max_length=4096, description="Where to write the file.")


CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class CompileModelArgs(_Args):
    """Build the deploy runtime of a decoder model: static KV cache, compiled vision + prefill and decode
    steps (lossless: the same greedy tokens as the eager model)."""

    device: str = Field(
        default="cpu",
        pattern=r"^(cpu|cuda(:[0-9]+)?)$",
        description="Where the runtime runs and is compiled for: 'cpu' (inductor C++ kernels) or 'cuda' / "
        "'cuda:N' (Triton kernels; CUDA graphs with mode 'reduce-overhead').",
    )
    mode: CompileMode = Field(
        default="default",
        description="torch.compile mode. reduce-overhead: each decode step replays as one CUDA graph (the "
        "fastest at batch 1 on a GPU); default: compiled kernels without CUDA graphs (the choice on a CPU); "
        "max-autotune: also benchmarks kernel choices (slow to compile).",
    )


ARGUMENTS: dict[str, type[BaseModel]] = {
    "compile_model": CompileModelArgs,
    "quantize": QuantizeArgs,
    "prune": PruneArgs,
    "distill": DistillArgs,
    "inspect_model": InspectModelArgs,
    "benchmark": BenchmarkArgs,
    "evaluate": EvaluateArgs,
    "export": ExportArgs,
}


def check_arguments(tool: str, **arguments: Any) -> BaseModel:
    """The tool's validated arguments; InvalidArgumentError (with every field's problem) otherwise."""
    try:
        return ARGUMENTS[tool].model_validate(arguments)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())) or 'arguments'}: {e.get('msg', 'invalid')}"
            for e in err.errors()
        )
        raise InvalidArgumentError(f"invalid arguments for {tool}: {problems}") from err
