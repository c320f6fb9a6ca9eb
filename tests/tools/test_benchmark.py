"""Benchmarks measure what they claim: bigger models are slower, inputs come from the right place."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from tests.tools.conftest import assert_same_weights, mlp_handle, weights_snapshot
from tools.architectures import build_model, input_specs
from tools.benchmarking import BenchmarkResult, benchmark
from tools.errors import DataMismatchError, InvalidArgumentError, UnsupportedDeviceError
from tools.handle import ArchitectureRef, EvalData, ModelHandle


def _policy(width: int) -> ModelHandle:
    ref = ArchitectureRef(name="mlp_policy", config={"obs_dim": 64, "act_dim": 8, "hidden": [width, width]})
    model = build_model(ref)
    return ModelHandle(
        runtime="torch", format="state_dict", model=model, inputs=input_specs(ref), architecture=ref
    )


def test_bigger_model_benchmarks_slower_and_larger() -> None:
    small, big = _policy(128), _policy(1024)  # 8x width, ~60x the FLOPs
    threads = torch.get_num_threads()
    r_small = benchmark(small, batch_size=32, warmup=3, iterations=30, num_threads=1)
    r_big = benchmark(big, batch_size=32, warmup=3, iterations=30, num_threads=1)
    assert torch.get_num_threads() == threads  # global state restored
    assert r_big.p50_ms > 2 * r_small.p50_ms
    assert r_big.size_bytes > 10 * r_small.size_bytes
    assert r_big.throughput_per_s < r_small.throughput_per_s
    assert r_big.peak_memory_mb * 2**20 >= r_big.size_bytes


def test_result_fields_are_consistent() -> None:
    handle = mlp_handle()
    before = weights_snapshot(handle)
    result = benchmark(handle, batch_size=4, warmup=2, iterations=25)
    assert isinstance(result, BenchmarkResult)
    assert 0 < result.min_ms <= result.p50_ms <= result.p90_ms <= result.p99_ms
    assert result.throughput_per_s == pytest.approx(4 * 1000.0 / result.mean_ms)
    assert result.device == "cpu" and result.timer == "perf_counter"
    assert result.memory_method == "weights_plus_rss_delta" and result.peak_memory_mb > 0
    assert result.input_source == "synthesized" and result.iterations == 25
    assert "torch" in result.versions and "onnxruntime" in result.versions
    assert result.device_name and result.num_threads and result.num_threads >= 1
    # 304k float32 parameters: the serialized size is at least the raw weight bytes.
    assert result.size_bytes >= 4 * sum(p.numel() for p in handle.model.parameters())
    assert_same_weights(before, weights_snapshot(handle))


def test_uses_eval_data_and_rejects_mismatched_data() -> None:
    handle = mlp_handle()
    handle.eval_data = EvalData(inputs={"obs": np.ones((3, 64), dtype=np.float32)})
    result = benchmark(handle, batch_size=8, warmup=1, iterations=3)
    assert result.input_source == "eval_data"
    handle.eval_data = EvalData(inputs={"obs": np.ones((3, 65), dtype=np.float32)})
    with pytest.raises(DataMismatchError, match="axis 1"):
        benchmark(handle, warmup=0, iterations=1)


def test_onnx_model(model_files: dict[str, Path]) -> None:
    proto = onnx.load(str(model_files["mlp_onnx"]))
    handle = ModelHandle(runtime="onnx", format="onnx", model=proto, inputs=mlp_handle().inputs)
    result = benchmark(handle, batch_size=2, warmup=2, iterations=10)
    assert result.runtime == "onnx" and result.p50_ms > 0
    assert result.size_bytes >= 4 * 300_000


def test_bad_arguments_raise_typed_errors() -> None:
    handle = mlp_handle()
    if not torch.cuda.is_available():
        with pytest.raises(UnsupportedDeviceError, match="CUDA"):
            benchmark(handle, device="cuda", iterations=1)
    with pytest.raises(InvalidArgumentError, match="device"):
        benchmark(handle, device="tpu")
    for kwargs in ({"batch_size": 0}, {"iterations": 0}, {"warmup": -1}, {"num_threads": 0}):
        with pytest.raises(InvalidArgumentError):
            benchmark(handle, **kwargs)


def test_size_falls_back_to_in_memory_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from tools.quantization import quantize

    # The submodule, not `tools.exporting` (which names the export function once it is imported).
    export_module = importlib.import_module("tools.exporting")

    handle = mlp_handle()
    quantized = quantize(handle, "weight_only_int8")  # torchao tensor subclasses
    serialized = benchmark(quantized, warmup=0, iterations=2)
    assert serialized.size_method == "serialized"

    def refuse(_handle: ModelHandle) -> int:
        raise RuntimeError("this tensor type cannot be serialized")

    monkeypatch.setattr(export_module, "serialized_size", refuse)
    fp32 = benchmark(handle, warmup=0, iterations=2)
    assert fp32.size_method == "in_memory"
    assert fp32.size_bytes == 4 * sum(p.numel() for p in handle.model.parameters())
    int8 = benchmark(quantized, warmup=0, iterations=2)
    # int8 weights + float scales and biases, counted through the subclass's inner tensors.
    assert int8.size_bytes == pytest.approx(serialized.size_bytes, rel=0.05)
    assert int8.size_bytes < 0.3 * fp32.size_bytes
