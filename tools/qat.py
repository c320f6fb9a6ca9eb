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

torchao's fake quantizers have no per-tensor granularity and no symmetric per-token one, so per-tensor
weights are trained per channel, activations per token, asymmetric (the same as per tensor at batch 1);
a layer whose input width is not a multiple of its block is trained per channel. The result names the
fake quantization of every layer; the convert step is the post-training path itself, so the result runs
what it says whatever the training imitated.

The step records what the recovery cost and gained: `result["recovery"]` holds the training report
(steps, seconds, curve) and the accuracy retained against the teacher by the post-training quantization
of the untrained weights and by the QAT result, on the same data.
"""

from __future__ import annotations

from typing import Any

import torch

from tools.arguments import DistillArgs
from tools.errors import DependencyMissingError, InvalidArgumentError, UnsupportedFormatError
from tools.handle import EvalData, ModelHandle

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
    teacher = teacher if teacher is not None else handle
    check_pair(handle, teacher)
    args = DistillArgs(
        steps=steps, time_budget_s=time_budget_s, learning_rate=learning_rate, seed=seed, batch_size=64
    )
    data, source = distillation_data(handle, teacher, data, args.num_samples, seed)
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
    report = fit_to_teacher(student, handle, teacher, data, args)
    _convert(student)

    trained = handle.clone(model=student)
    out = quantize(trained, method, **options)
    step = out.recipe[-1]
    step.update(
        recovery="qat",
        recovery_steps=steps,
        recovery_time_s=time_budget_s,
        recovery_learning_rate=learning_rate,
    )
    before = accuracy_against(untrained, teacher, data)
    after = accuracy_against(out, teacher, data)
    recovery: dict[str, Any] = {
        "method": "qat",
        "library": "torchao.quantization.qat (QATConfig prepare / convert)",
        "kernel_path": path,
        "fake_quantization": described,
        "data_source": source,
        "teacher": "given" if teacher is not handle else "the float model itself",
        **report.summary(),
        "accuracy_retained_before": round(before, 6),
        "accuracy_retained_after": round(after, 6),
        "accuracy_gained": round(after - before, 6),
    }
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


def _fake_configs(method: str, path: str, in_features: int, block_size: int | None) -> tuple[Any, Any, str]:
    """(activation config, weight config, what they imitate) for one Linear layer."""
    from torchao.quantization.qat import IntxFakeQuantizeConfig

    if method == "weight_only_int8":
        return None, IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True), "int8 per channel"
    if method == "dynamic_int8":
        if path == "onnxruntime":
            from tools.onnx_quantization import needs_reduce_range

            bits = torch.int7 if needs_reduce_range() else torch.int8
            weight = IntxFakeQuantizeConfig(bits, "per_channel", is_symmetric=True)
            act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
            return (
                act,
                weight,
                f"{'int7' if bits is torch.int7 else 'int8'} per channel, activations per token",
            )
        if path == "portable_dynamic":
            weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
            act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
            return (
                act,
                weight,
                "int8 per channel, activations per row (asymmetric: torchao has no symmetric per token)",
            )
        weight = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
        act = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
        return act, weight, "int8 per channel for torch.ao's per-tensor weights, activations per token"
    if path == "onnxruntime":
        block = block_size or ORT_INT4_BLOCK
        while block > 16 and block > in_features:
            block //= 2
        if in_features % block:
            weight = IntxFakeQuantizeConfig(torch.int4, "per_channel", is_symmetric=True)
            return None, weight, f"4-bit per channel (input width {in_features} is not a multiple of {block})"
        weight = IntxFakeQuantizeConfig(torch.int4, group_size=block, is_symmetric=True)
        act = IntxFakeQuantizeConfig(torch.int8, group_size=block, is_symmetric=True)
        return act, weight, f"4-bit blocks of {block}, int8 activation blocks"
    group = TORCHAO_INT4_GROUP
    weight = IntxFakeQuantizeConfig(torch.int4, group_size=group, is_symmetric=False)
    return None, weight, f"4-bit groups of {group}, asymmetric"


def _prepare(
    model: torch.nn.Module, names: list[str], method: str, path: str, block: int | None
) -> dict[str, str]:
    try:
        from torchao.quantization import quantize_
        from torchao.quantization.qat import QATConfig
    except ImportError as exc:  # pragma: no cover - torchao is a dependency
        raise DependencyMissingError(f"recovery='qat' needs torchao: {exc}") from exc
    described: dict[str, str] = {}
    for name in names:
        layer = model.get_submodule(name)
        act, weight, text = _fake_configs(method, path, int(layer.in_features), block)
        config = QATConfig(activation_config=act, weight_config=weight, step="prepare")
        quantize_(model, config, filter_fn=lambda _m, fqn, wanted=name: fqn == wanted)
        described[name] = text
    return described


def _convert(model: torch.nn.Module) -> None:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    # No base config: the fake-quantized layers become plain nn.Linear with the trained weights; the
    # post-training path quantizes them next.
    quantize_(model, QATConfig(step="convert"))
