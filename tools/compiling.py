"""`compile_model`: a decoder model as its deploy runtime (tools.decode_runtime), a candidate like any other.

    compiled = compile_model(handle, device="cuda", mode="reduce-overhead")

The result is a new handle whose model is a `DecodeRuntime` around a copy of the eager model: static KV
cache, vision + prefill and each decode step compiled with inductor (C++ kernels on a CPU, Triton on
CUDA; `reduce-overhead` replays each decode step as one CUDA graph). It keeps the model's contract, so
`benchmark` and `evaluate` measure it as they measure any version, and its greedy tokens are the eager
model's (lossless). The compile happens here, on a batch-1 example, so its cost is the tool's and the
benchmark that follows times compiled code; the step records it (`result.compile_s`).

Weight formats compose: `quantize` first (torchao int8 / int4 / float8 weight-only, bf16), then
`compile_model`: the runtime calls the quantized layers inside its compiled graphs. A handle that is
already a runtime is rebuilt around its eager model with the new settings.

Typed errors: an ONNX model or a torch model that is not a decoder (UnsupportedFormatError), an unknown
mode or device (InvalidArgumentError), CUDA asked for on a machine without it (UnsupportedDeviceError).
"""

from __future__ import annotations

import time
from typing import Any

from tools.arguments import check_arguments
from tools.errors import UnsupportedDeviceError, UnsupportedFormatError
from tools.handle import ModelHandle, copy_model

# Below this many CPU cores inductor compiles in-process: a worker pool costs more to start than it saves.
IN_PROCESS_COMPILE_CORES = 4


def compile_model(handle: ModelHandle, *, device: str = "cpu", mode: str = "default") -> ModelHandle:
    """A new handle running `handle`'s decoder as the static-KV-cache runtime compiled for `device`."""
    check_arguments("compile_model", device=device, mode=mode)
    import torch

    from tools.decode_runtime import DecodeRuntime, decode_runtime, decoder_view

    if handle.runtime != "torch":
        raise UnsupportedFormatError(
            f"compile_model builds a torch decode runtime; this is an {handle.runtime.upper()} model, which "
            "runs in ONNX Runtime as it is",
        )
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedDeviceError(
            f"compile_model(device='{device}') needs a CUDA GPU and this machine has none; use device='cpu'"
        )
    eager = handle.model.model if isinstance(handle.model, DecodeRuntime) else handle.model
    if isinstance(eager, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise UnsupportedFormatError(
            f"compile_model needs the model's Python modules; a {handle.format} graph has none to run over "
            "a static cache (upload the weights with their architecture, or a transformers directory)",
        )
    decoder_view(eager)  # UnsupportedFormatError unless it is a decoder the runtime runs
    torchao = [s for s in handle.recipe if (s.get("result") or {}).get("backend") == "torchao"]
    if device == "cpu" and torchao:
        # Inductor's CPU code for torchao's int8 weight tensors ended the process (a general protection
        # fault in libtorch_cpu) on this machine, 2026-12-02: refused rather than risking a session.
        raise UnsupportedFormatError(
            f"compile_model on a CPU does not take torchao-quantized weights ({torchao[-1].get('method')}); "
            "compile the float model, or quantize with dynamic_int8 / ONNX Runtime for a CPU",
        )
    import torch._inductor.config as inductor_config

    # Closer to eager in bf16 / fp16: inductor rounds fused intermediates as eager does (compiled bf16
    # vla-mini, random weights, kept 96.4% of eager bf16's action tokens without it and 99.3% with it:
    # `scripts/gpu_check.py --runtime-cpu`, 2026-12-02). float32 gives eager's tokens exactly (tests).
    inductor_config.emulate_precision_casts = True
    if device == "cpu" and (torch.get_num_threads() < IN_PROCESS_COMPILE_CORES):
        inductor_config.compile_threads = 1
    model = copy_model(eager).eval()
    if str(handle.device) != device:
        model = model.to(device)
    runtime = decode_runtime(model, compile=True, mode=mode)
    started = time.perf_counter()
    _warm_up(handle, runtime, device)
    compile_s = time.perf_counter() - started
    step: dict[str, Any] = {
        "tool": "compile_model",
        "device": device,
        "mode": mode,
        "result": {
            **runtime.describe(),
            "compile_s": round(compile_s, 4),  # near 0 when this process compiled the same graph before
            "torch": torch.__version__.split("+")[0],
            "emulate_precision_casts": True,
            "loader": "tools.decode_runtime.load_runtime(path, device=..., mode=...) on the .pt2 download",
        },
    }
    return handle.with_step(runtime, step, device=device)


def _warm_up(handle: ModelHandle, runtime: Any, device: str) -> None:
    """One batch-1 call: compiles the steps now (the benchmark then times compiled code)."""
    import torch

    from tools.runtime import synthesize_inputs, to_tensors

    probe = handle.clone(model=runtime, device=device)
    tensors = to_tensors(probe, synthesize_inputs(handle.inputs, 1, seed=0))
    with torch.inference_mode():
        runtime(*tensors)
