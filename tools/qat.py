"""Quantization-aware recovery: `quantize(handle, method, recovery="qat")`.

torchao's QAT flow on the model's Linear layers: `quantize_(model, QATConfig(activation_config=...,
weight_config=..., step="prepare"))` swaps them for `FakeQuantizedLinear`s that round weights (and
activations, where the kernel quantizes them) the way the target kernel will; the model is then
distilled from its teacher (`tools.distillation.fit_to_teacher`: the original, or the float model
itself), `QATConfig(step="convert")` swaps the trained layers back to `nn.Linear`, and the post-training
path of `tools.quantization.quantize` quantizes the trained weights. So the result runs on exactly the
kernels the post-training one runs on (torch.ao dynamic int8, torchao / portable int8 weight-only, ONNX
Runtime's DynamicQuantizeMatMul or MatMulNBits), only with weights that learned to sit on its grid.

The fake quantization follows the kernel the method takes on this model and machine:

- weight_only_int8 (torchao, portable int8 layers): int8 weights per channel, symmetric.
- dynamic_int8 on ONNX Runtime: int8 weights per channel, symmetric (7-bit where ONNX Runtime reduces
  the range); activations uint8 per tensor, asymmetric, at run time.
- dynamic_int8 on .pt2 (portable layers): int8 weights per channel; activations int8 per row, symmetric.
- dynamic_int8 on torch.ao: int8 weights per tensor; activations uint8 per tensor, asymmetric.
- weight_only_int4 on ONNX Runtime (MatMulNBits): symmetric 4-bit blocks of 32 along the input (narrower
  layers: their width, at least 16); activations int8 blocks, symmetric (accuracy level 4).
- weight_only_int4 on torchao (CUDA): 4-bit groups of 128, asymmetric; activations float.

torchao's fake quantizers have no per-tensor granularity: per-tensor quantization (torch.ao's weights,
dynamic activations) is fake-quantized by `PerTensorFakeQuantize` (torch's own
`fake_quantize_per_tensor_affine`) inside torchao's FakeQuantizedLinear, over the batch at hand as the
kernels do. Where neither expresses the kernel exactly (symmetric per-row activations of the portable
layers are trained asymmetric; a layer whose input width is not a multiple of its block per channel), the
result names the fake quantization of every layer; the convert step is the post-training path itself, so
the result runs what it says whatever the training imitated.

The step records what the recovery cost and gained: `result["recovery"]` holds the training report
(steps, seconds, curve) and the accuracy retained against the teacher by the post-training quantization
of the untrained weights and of the trained ones, on the same data. Training follows a proxy of the
kernel, so a trained result that retains less on the kernel itself than the untrained one is not kept
(`kept: "post_training"`, said so); the choice is deterministic, so a replay makes it again.
"""

from __future__ import annotations

from typing import Any

import torch

from tools.arguments import DistillArgs
from tools.errors import DependencyMissingError, InvalidArgumentError, UnsupportedFormatError
from tools.handle import TRAINED_ON_EVAL_DATA, EvalData, ModelHandle

QAT_METHODS = ("dynamic_int8", "weight_only_int8", "weight_only_int4")
ORT_INT4_BLOCK = 32
TORCHAO_INT4_GROUP = 128


def quantize_aware(
    handle: ModelHandle,
    method: str,
    *,
    teacher: ModelHandle | None,
    include: list[str] | None,
    exclude: list[str] | None,
    layer_types: list[str] | None,
    seed: int,
    backend: str,
    block_size: int | None,
    steps: int,
    time_budget_s: float | None,
    learning_rate: float,
    data: EvalData | None = None,
) -> ModelHandle:
    """Fake-quantize, distill, convert: `quantize(handle, method, ...)` of weights trained for its grid."""
    from tools.distillation import (
        accuracy_against,
        check_pair,
        distillation_data,
        fit_to_teacher,
        split_for_training,
        trainable_copy,
    )
    from tools.quantization import quantize, torch_layer_names

    if method not in QAT_METHODS:
        raise InvalidArgumentError(
            f"recovery='qat' applies to {', '.join(QAT_METHODS)}; {method} has no quantization-aware path "
            "here (static_int8 is calibrated in ONNX Runtime; fp16 / bf16 and bitsandbytes lose too little "
            "to train for)"
        )
    if handle.runtime != "torch":
        raise UnsupportedFormatError(
            "quantization-aware training trains torch weights and this model is an ONNX graph; quantize the "
            "torch model (state dict, .pt2 or TorchScript) with recovery='qat'"
        )
    if layer_types and set(layer_types) - {"Linear"}:
        raise InvalidArgumentError(
            "recovery='qat' fake-quantizes Linear layers; layer_types must be ['Linear']"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"recovery_steps must be at least 1, got {steps!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise InvalidArgumentError(
            f"recovery_time_s must be positive (or None for steps only), got {time_budget_s}"
        )
    if not learning_rate > 0:
        raise InvalidArgumentError(f"recovery_learning_rate must be positive, got {learning_rate}")
    teacher = teacher if teacher is not None else handle
    check_pair(handle, teacher)
    args = DistillArgs(
        steps=steps, time_budget_s=time_budget_s, learning_rate=learning_rate, seed=seed, batch_size=64
    )
    data, source = distillation_data(handle, teacher, data, args.num_samples, seed)
    data, measured_on, held_out = split_for_training(data, source)
    options: dict[str, Any] = {
        "include": include,
        "exclude": exclude,
        "layer_types": layer_types,
        "seed": seed,
        "backend": backend,
        "block_size": block_size,
    }
    untrained = quantize(handle, method, **options)
    path = kernel_path(untrained)

    student, how = trainable_copy(handle)
    names = torch_layer_names(student, ("Linear",), include, exclude)
    if not names:
        raise InvalidArgumentError(
            f"no Linear layer to train for {method} matches include={include} exclude={exclude}"
        )
    described = _prepare(student, names, method, path, block_size)
    report = fit_to_teacher(student, handle, teacher, data, args, synthesize=source == "synthesized")
    _convert(student)

    trained = quantize(handle.clone(model=student), method, **options)
    if held_out:
        trained.metadata[TRAINED_ON_EVAL_DATA] = True
    before = accuracy_against(untrained, teacher, measured_on)
    after = accuracy_against(trained, teacher, measured_on)
    # Training matches a proxy of the kernel (fake quantization); measured on the kernel itself, a result
    # that retains less than the untrained weights do is not kept.
    kept = "trained" if after >= before else "post_training"
    out = trained if kept == "trained" else untrained
    step = out.recipe[-1]
    step.update(
        recovery="qat",
        recovery_steps=steps,
        recovery_time_s=time_budget_s,
        recovery_learning_rate=learning_rate,
    )
    recovery: dict[str, Any] = {
        "method": "qat",
        "library": "torchao.quantization.qat (QATConfig prepare / convert)",
        "kernel_path": path,
        "fake_quantization": described,
        "data_source": source,
        "held_out_samples": held_out,
        "teacher": "given" if teacher is not handle else "the float model itself",
        **report.summary(),
        "accuracy_retained_before": round(before, 6),
        "accuracy_retained_trained": round(after, 6),
        "accuracy_retained_after": round(max(after, before), 6),
        "accuracy_gained": round(max(after, before) - before, 6),
        "kept": kept,
    }
    if kept == "post_training":
        recovery["note"] = (
            "the trained weights retained less on the kernel than the untrained ones (the fake quantization "
            "is a proxy of the kernel): the post-training result is kept"
        )
    if how:
        recovery["module_tree"] = how
    step["result"]["recovery"] = recovery
    step["result"]["replay"] = {"recovery_steps": report.steps_run, "recovery_time_s": None}
    return out


def kernel_path(quantized: ModelHandle) -> str:
    """Which kernel the post-training path chose: what the fake quantization must imitate."""
    result = quantized.recipe[-1].get("result", {})
    method = quantized.recipe[-1]["method"]
    if quantized.runtime == "onnx":
        return "onnxruntime"
    backend = str(result.get("backend", ""))
    if backend == "torch.ao":
        return "torch.ao"
    if method == "dynamic_int8" and "Int8DynamicLinear" in str(result.get("layer", "")):
        return "portable_dynamic"
    return "torchao"


class PerTensorFakeQuantize(torch.nn.Module):
    """Fake quantization with one scale for the whole tensor, from the range of the tensor at hand, with
    straight-through gradients (`torch.fake_quantize_per_tensor_affine`, the primitive of torch.ao's QAT):
    what torch.ao's and ONNX Runtime's dynamic int8 kernels do to activations (over the batch they are
    given), and torch.ao to weights. torchao's fake quantizers have no per-tensor granularity."""

    def __init__(self, qmin: int, qmax: int, *, symmetric: bool) -> None:
        super().__init__()
        self.qmin, self.qmax, self.symmetric = qmin, qmax, symmetric
        self.config = None  # torchao's convert step reads a fake quantizer's config (range learning)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.symmetric:
                scale = x.abs().amax() / ((self.qmax - self.qmin) / 2)
                zero = torch.zeros((), dtype=torch.int32, device=x.device)
            else:
                lo, hi = x.amin().clamp_max(0), x.amax().clamp_min(0)
                scale = (hi - lo) / (self.qmax - self.qmin)
                zero = (self.qmin - torch.round(lo / scale.clamp_min(1e-12))).to(torch.int32)
            scale = scale.clamp_min(1e-12).float().reshape(())
        return torch.fake_quantize_per_tensor_affine(x, scale, zero.reshape(()), self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"[{self.qmin}, {self.qmax}], {'symmetric' if self.symmetric else 'asymmetric'}"


class RowsFakeQuantize(torch.nn.Module):
    """torchao's per-group fake quantizer on activations of any rank: the group quantizer takes a matrix,
    so [batch, tokens, features] is quantized as [batch * tokens, features] (each token's blocks, as
    MatMulNBits quantizes each row's)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from torchao.quantization.qat import IntxFakeQuantizer

        self.inner = IntxFakeQuantizer(config)
        self.config = config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return self.inner(x)
        return self.inner(x.reshape(-1, x.shape[-1])).reshape(x.shape)


def _fake_quantizers(
    method: str, path: str, in_features: int, block_size: int | None
) -> tuple[Any, Any, str]:
    """(activation, weight) fake quantization for one Linear layer, each a torchao IntxFakeQuantizeConfig, a
    module (PerTensorFakeQuantize, RowsFakeQuantize), or None; and what they imitate."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    if method == "weight_only_int8":
        return None, IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True), "int8 per channel"
    if method == "dynamic_int8":
        if path == "onnxruntime":
            from tools.onnx_quantization import needs_reduce_range

            bits = torch.int7 if needs_reduce_range() else torch.int8
            weight = IntxFakeQuantizeConfig(bits, "per_channel", is_symmetric=True)
            act = PerTensorFakeQuantize(0, 255, symmetric=False)  # DynamicQuantizeLinear: uint8
            name = "int7" if bits is torch.int7 else "int8"
            return act, weight, f"{name} per channel; activations uint8 per tensor (DynamicQuantizeLinear)"
        if path == "portable_dynamic":
            weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
            act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
            return (
                act,
                weight,
                "int8 per channel; activations int8 per row (asymmetric: the nearest torchao has)",
            )
        # torch.ao's quantized::linear_dynamic: per-tensor qint8 weights, quint8 activations of 7 bits
        # (reduce_range on x86).
        weight = PerTensorFakeQuantize(-128, 127, symmetric=True)
        act = PerTensorFakeQuantize(0, 127, symmetric=False)
        return act, weight, "int8 per tensor; activations 7-bit per tensor (torch.ao linear_dynamic)"
    if path == "onnxruntime":
        block = block_size or ORT_INT4_BLOCK
        while block > 16 and block > in_features:
            block //= 2
        if in_features % block:
            weight = IntxFakeQuantizeConfig(torch.int4, "per_channel", is_symmetric=True)
            return None, weight, f"4-bit per channel (input width {in_features} is not a multiple of {block})"
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=block, is_symmetric=True)
        act = RowsFakeQuantize(IntxFakeQuantizeConfig(torch.int8, group_size=block, is_symmetric=True))
        return act, weight, f"4-bit blocks of {block}; activations int8 blocks (MatMulNBits accuracy level 4)"
    group = TORCHAO_INT4_GROUP
    weight = IntxFakeQuantizeConfig(torch.int4, group_size=group, is_symmetric=False)
    return None, weight, f"4-bit groups of {group}, asymmetric"


def _prepare(
    model: torch.nn.Module, names: list[str], method: str, path: str, block: int | None
) -> dict[str, str]:
    """Swap the named Linear layers for torchao's FakeQuantizedLinear (QATConfig, step "prepare"); where the
    kernel quantizes per tensor, its fake quantizers are PerTensorFakeQuantize modules."""
    try:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise DependencyMissingError(f"recovery='qat' needs torchao: {exc}") from exc
    placeholder = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    described: dict[str, str] = {}
    for name in names:
        layer = model.get_submodule(name)
        act, weight, text = _fake_quantizers(method, path, int(layer.in_features), block)
        config = QATConfig(
            activation_config=act if isinstance(act, IntxFakeQuantizeConfig) else None,
            weight_config=weight if isinstance(weight, IntxFakeQuantizeConfig) else placeholder,
            step="prepare",
        )
        quantize_(model, config, filter_fn=lambda _m, fqn, wanted=name: fqn == wanted)
        fake = model.get_submodule(name)
        if isinstance(weight, PerTensorFakeQuantize):
            fake.weight_fake_quantizer = weight
        if isinstance(act, (PerTensorFakeQuantize, RowsFakeQuantize)):
            fake.activation_fake_quantizer = act
        described[name] = text
    return described


def _convert(model: torch.nn.Module) -> None:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    # No base config: the fake-quantized layers become plain nn.Linear with the trained weights; the
    # post-training path quantizes them next.
    quantize_(model, QATConfig(step="convert"))
