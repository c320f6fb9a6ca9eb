"""Latency, throughput and memory of one forward pass, measured honestly.

Warm-up iterations run first and are not timed. On CUDA each iteration is timed with CUDA events
(GPU time, no host overhead in the number); on CPU with `time.perf_counter`. Inputs are the
model's evaluation data (the first `batch_size` samples, repeated if there are fewer) or inputs
synthesized from its signature with a fixed seed. Input conversion happens once, outside the
timed loop.

Peak memory:
- CUDA: the model's own weights on the device plus the peak growth of
  `torch.cuda.max_memory_allocated` over warm-up and timed run (activations, workspace), so other
  models resident on the same GPU are not counted. (ONNX Runtime's CUDA memory is invisible to
  torch: ONNX models on CUDA report their weights only.)
- CPU: the weights' size (the serialized size, which is what a process holds once loaded) plus the
  peak growth of the process's resident set during the timed run, sampled by a thread; Python's
  tracemalloc does not see torch's or ONNX Runtime's allocations.
`memory_method` says which.
"""

from __future__ import annotations

import platform
import threading
import time
from importlib import metadata
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from tools.arguments import check_arguments
from tools.errors import InvalidArgumentError, UnsupportedDeviceError
from tools.handle import ModelHandle, copy_model
from tools.runtime import check_inputs, onnx_session, synthesize_inputs, to_tensors, torch_forward

_VERSIONED = ("torch", "onnxruntime", "onnx", "torchao", "bitsandbytes", "torch-pruning", "numpy")


class BenchmarkResult(BaseModel):
    device: str = Field(description="'cpu' or 'cuda[:n]' the model ran on.")
    device_name: str
    runtime: str
    format: str
    batch_size: int
    warmup: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    std_ms: float
    throughput_per_s: float = Field(description="Samples per second at this batch size (batch_size / mean).")
    peak_memory_mb: float
    memory_method: Literal["cuda_weights_plus_peak_delta", "weights_plus_rss_delta", "weights_only"]
    size_bytes: int = Field(description="Bytes of the model saved in its natural format.")
    size_method: Literal["serialized", "in_memory"] = Field(
        "serialized",
        description="serialized: tools.exporting.serialized_size; in_memory: bytes of the parameters and "
        "buffers, for weights no serializer handles (sparse semi-structured tensors).",
    )
    timer: Literal["cuda_events", "perf_counter"]
    num_threads: int | None = Field(None, description="torch intra-op threads during the run (CPU).")
    input_source: Literal["eval_data", "synthesized"]
    versions: dict[str, str]


def benchmark(
    handle: ModelHandle,
    *,
    device: str = "cpu",
    batch_size: int = 1,
    warmup: int = 10,
    iterations: int = 100,
    num_threads: int | None = None,
) -> BenchmarkResult:
    """Time `iterations` forward passes of `batch_size` samples on `device` after `warmup` untimed ones.

    `num_threads` sets torch's intra-op threads for the run only (restored afterwards).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(iterations, int) or iterations < 1:
        raise InvalidArgumentError(f"iterations must be a positive integer, got {iterations!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise InvalidArgumentError(f"warmup must be a non-negative integer, got {warmup!r}")
    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise InvalidArgumentError(f"num_threads must be a positive integer, got {num_threads!r}")
    if not isinstance(device, str) or (device != "cpu" and not device.startswith("cuda")):
        raise InvalidArgumentError(f"device must be 'cpu' or 'cuda', got {device!r}")
    # The registry's schema (the LLM's tool definition) bounds every argument the same way.
    check_arguments(
        "benchmark",
        device=device,
        batch_size=batch_size,
        warmup=warmup,
        iterations=iterations,
        num_threads=num_threads,
    )
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UnsupportedDeviceError(
                "benchmark on 'cuda' needs an NVIDIA GPU; this machine has no CUDA device (use device='cpu')"
            )
        if device == "cuda":
            device = f"cuda:{torch.cuda.current_device()}"

    size_bytes, size_method = _size(handle)
    runner = _on_device(handle, device)
    inputs, source = _inputs(runner, batch_size)
    call = _prepare(runner, inputs, device)

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        if device.startswith("cuda"):
            times, growth = _time_cuda(call, warmup, iterations, torch.device(device))
            if runner.runtime == "torch" and isinstance(runner.model, torch.nn.Module):
                memory_method: Any = "cuda_weights_plus_peak_delta"
                peak_mb = (_module_bytes(runner.model) + growth) / 2**20
            else:
                memory_method, peak_mb = "weights_only", size_bytes / 2**20
            timer: Any = "cuda_events"
        else:
            times, rss_delta = _time_cpu(call, warmup, iterations)
            memory_method, timer = "weights_plus_rss_delta", "perf_counter"
            peak_mb = (size_bytes + rss_delta) / 2**20
        threads = torch.get_num_threads() if not device.startswith("cuda") else None
    finally:
        torch.set_num_threads(previous_threads)

    arr = np.asarray(times, dtype=np.float64)
    mean = float(arr.mean())
    return BenchmarkResult(
        device=device,
        device_name=_device_name(device),
        runtime=handle.runtime,
        format=handle.format,
        batch_size=batch_size,
        warmup=warmup,
        iterations=iterations,
        p50_ms=float(np.percentile(arr, 50)),
        p90_ms=float(np.percentile(arr, 90)),
        p99_ms=float(np.percentile(arr, 99)),
        mean_ms=mean,
        min_ms=float(arr.min()),
        std_ms=float(arr.std()),
        throughput_per_s=batch_size * 1000.0 / mean if mean > 0 else float("inf"),
        peak_memory_mb=float(peak_mb),
        memory_method=memory_method,
        size_bytes=size_bytes,
        size_method=size_method,
        timer=timer,
        num_threads=threads,
        input_source=source,
        versions=library_versions(),
    )


def _size(handle: ModelHandle) -> tuple[int, Literal["serialized", "in_memory"]]:
    from tools.exporting import serialized_size

    try:
        return int(serialized_size(handle)), "serialized"
    except Exception:
        if handle.runtime != "torch" or not isinstance(handle.model, torch.nn.Module):
            raise
    return _module_bytes(handle.model), "in_memory"


def _module_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    return sum(_tensor_bytes(t, seen) for t in [*model.parameters(), *model.buffers()])


def _tensor_bytes(t: torch.Tensor, seen: set[int]) -> int:
    """Bytes held by a tensor, through tensor subclasses (their inner tensors), each storage once."""
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = flatten()
        return sum(
            _tensor_bytes(getattr(t, n), seen) for n in names if isinstance(getattr(t, n), torch.Tensor)
        )
    try:
        key = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        key = id(t)
    if key in seen and key != 0:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def library_versions() -> dict[str, str]:
    out: dict[str, str] = {"python": platform.python_version()}
    for dist in _VERSIONED:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if torch.version.cuda:
        out["cuda"] = str(torch.version.cuda)
    return out


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    return f"{name} ({os.cpu_count()} logical cores)"


def _on_device(handle: ModelHandle, device: str) -> ModelHandle:
    """The handle itself when it is already there; else a copy moved to `device` (input untouched)."""
    want_cuda = device.startswith("cuda")
    if handle.device.startswith("cuda") == want_cuda and (
        not want_cuda or _cuda_index(handle.device) == device
    ):
        return handle
    if handle.runtime == "onnx":
        if want_cuda:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UnsupportedDeviceError(
                    "this ONNX Runtime build has no CUDA execution provider; benchmark ONNX models on 'cpu'"
                )
        return handle.clone(model=handle.model, device=device)
    model = copy_model(handle.model).to(device)
    return handle.clone(model=model, device=device)


def _cuda_index(device: str) -> str:
    """'cuda' -> 'cuda:<current>', so a handle on 'cuda' is not copied to benchmark on 'cuda:0'."""
    return f"cuda:{torch.cuda.current_device()}" if device == "cuda" else device


def _inputs(
    handle: ModelHandle, batch_size: int
) -> tuple[dict[str, np.ndarray], Literal["eval_data", "synthesized"]]:
    data = handle.eval_data
    if data is not None and data.inputs and data.num_samples > 0:
        check_inputs(handle.inputs, data.inputs)
        n = data.num_samples
        idx = np.arange(batch_size) % n
        return {k: np.ascontiguousarray(v[idx]) for k, v in data.inputs.items()}, "eval_data"
    if not handle.inputs:
        raise InvalidArgumentError(
            "the model has no input signature and no evaluation data to benchmark with"
        )
    return synthesize_inputs(handle.inputs, batch_size, seed=0), "synthesized"


def _prepare(handle: ModelHandle, inputs: dict[str, np.ndarray], device: str) -> Any:
    """A zero-argument callable running one forward pass on ready-made inputs."""
    if handle.runtime == "onnx":
        session = onnx_session(handle)
        feeds = {}
        for spec, meta in zip(handle.inputs, session.get_inputs(), strict=False):
            arr = inputs[spec.name]
            if meta.type == "tensor(float16)":
                arr = arr.astype(np.float16)
            feeds[meta.name] = arr
        return lambda: session.run(None, feeds)
    tensors = to_tensors(handle, inputs)

    def run() -> Any:
        with torch.inference_mode():
            return torch_forward(handle, tensors)

    return run


def _time_cpu(call: Any, warmup: int, iterations: int) -> tuple[list[float], int]:
    import psutil

    # One untimed pass first, so one-time process costs (thread pools, kernel caches, lazy imports)
    # are not charged to whichever model happens to be benchmarked first. The baseline is taken
    # before the warm-up: activation buffers and allocator pools grow in the first passes, and that
    # growth is part of what running the model costs.
    call()
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times: list[float] = []
    try:
        for _ in range(warmup):
            call()
        for _ in range(iterations):
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1000.0)
    finally:
        stop.set()
        sampler.join()
    peak[0] = max(peak[0], proc.memory_info().rss)
    return times, max(0, peak[0] - base)


def _time_cuda(call: Any, warmup: int, iterations: int, device: torch.device) -> tuple[list[float], int]:
    """Per-iteration CUDA-event times, and the peak allocation growth above what was resident before."""
    torch.cuda.synchronize(device)
    call()  # untimed first pass: lazy kernel loading and cuBLAS workspaces are one-time costs
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        call()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(iterations)]
    for i in range(iterations):
        starts[i].record()
        call()
        ends[i].record()
    torch.cuda.synchronize(device)
    times = [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]
    return times, max(0, int(torch.cuda.max_memory_allocated(device)) - resident)
