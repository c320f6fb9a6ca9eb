"""Input signatures read off the artifact itself, completed by the user, and checked against the graph.

No code from an upload runs here beyond the model's own graph (TorchScript and torch.export
programs are graphs of aten operators; ONNX is data).

- TorchScript: a saved module's inputs carry no shapes, so each input is followed to its first
  consumers in the inlined graph: `aten::linear` gives the feature size (its weight's columns),
  `aten::conv1d/2d/3d` the channels (and the rank), `aten::embedding` an integer id input with the
  table's row count as its range, `aten::layer_norm` the last axis. What the graph cannot tell (an
  image's height and width) is found by trying common sizes on the model itself; when none runs, it
  is named in `missing`.
- ONNX and torch.export state shapes and dtypes; what they do not state are value ranges, so the
  same first-consumer rule gives token ids their vocabulary (`Gather` on a weight table,
  `aten.embedding`).
- Everywhere: integer inputs named like a mask get ones, images (float, rank 4, 1/3/4 channels)
  values in [0, 1], uint8 inputs the byte range.

`merge_signature` applies a user's `input_signature` over what the file says and refuses one that
contradicts the graph (names, rank, fixed axes, dtypes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from tools.errors import DataMismatchError, InvalidArgumentError
from tools.handle import InputSpec

DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
# Image sides tried, in order, when the graph does not fix them (ImageNet's first).
PROBE_SIDES = (224, 32, 64, 128, 96, 256, 384, 512, 16, 28, 48, 160, 112, 518)
# Ops an input flows through unchanged in the axes we read (followed to the first real consumer).
_PASS_THROUGH = {
    "aten::to",
    "aten::contiguous",
    "aten::clone",
    "aten::dropout",
    "aten::relu",
    "aten::gelu",
    "aten::tanh",
    "aten::sigmoid",
    "aten::add",
    "aten::sub",
    "aten::mul",
    "aten::div",
    "aten::float",
    "aten::type_as",
    "aten::detach",
}


# Convolution ops -> the position of their `groups` argument.
_CONVOLUTIONS = {
    "aten::conv1d": -1,
    "aten::conv2d": -1,
    "aten::conv3d": -1,
    "aten::_convolution_mode": -1,
    "aten::_convolution": 8,
}


@dataclass
class Signature:
    """What could be read: the inputs (None axes still dynamic), what is missing, and how it was found."""

    inputs: list[InputSpec]
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    argument_names: list[str] = field(default_factory=list)
    source: str = "file"  # file (the file states it) | graph (read off a TorchScript graph)

    @property
    def complete(self) -> bool:
        return bool(self.inputs) and not self.missing


def _clean_name(debug_name: str) -> str:
    """TorchScript value names carry a uniquifying suffix ('input_ids.1')."""
    base, _, suffix = debug_name.rpartition(".")
    return base if base and suffix.isdigit() else debug_name


def torchscript_argument_names(module: Any) -> list[str]:
    """The names of forward()'s arguments (self excluded)."""
    return [_clean_name(v.debugName()) for v in list(module.graph.inputs())[1:]]


def _attr_tensor(module: Any, value: Any) -> Any:
    """The tensor a `prim::GetAttr` chain names (self.encoder.0.weight), or None."""
    path: list[str] = []
    node = value.node()
    while node.kind() == "prim::GetAttr":
        path.append(node.s("name"))
        value = node.input()
        node = value.node()
    if node.kind() != "prim::Param" or not path:
        return None
    obj = module
    for name in reversed(path):
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _ts_constant(value: Any) -> Any:
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        items = [_ts_constant(v) for v in node.inputs()]
        return items if all(isinstance(i, int) for i in items) else None
    return None


def _ts_consumers(value: Any) -> list[tuple[Any, int]]:
    """(node, input position) of the first non-pass-through consumers of `value`."""
    out: list[tuple[Any, int]] = []
    seen: set[int] = set()
    stack = [value]
    while stack:
        v = stack.pop()
        for use in v.uses():
            node = use.user
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.kind() in _PASS_THROUGH and use.offset == 0 and node.outputsSize() == 1:
                stack.append(node.output())
            else:
                out.append((node, use.offset))
    return out


def _read_ts_input(module: Any, value: Any, name: str) -> tuple[InputSpec | None, str | None]:
    """One input's spec from its consumers; (None, what is missing) when the graph does not tell."""
    for node, offset in _ts_consumers(value):
        kind = node.kind()
        args = list(node.inputs())
        if kind == "aten::linear" and offset == 0:
            weight = _attr_tensor(module, args[1])
            if weight is not None and weight.dim() == 2:
                return InputSpec(name=name, shape=[None, int(weight.shape[1])]), None
        if kind in _CONVOLUTIONS and offset == 0:
            weight = _attr_tensor(module, args[1])
            if weight is None:
                continue
            groups = _ts_constant(args[_CONVOLUTIONS[kind]])
            channels = int(weight.shape[1]) * int(groups if isinstance(groups, int) else 1)
            spatial = weight.dim() - 2
            low, high = (0.0, 1.0) if channels in (1, 3, 4) and spatial == 2 else (None, None)
            spec = InputSpec(name=name, shape=[None, channels, *([None] * spatial)], low=low, high=high)
            return spec, "spatial"
        if kind == "aten::embedding" and offset == 1:
            table = _attr_tensor(module, args[0])
            if table is not None:
                return InputSpec(
                    name=name, shape=[None, None], dtype="int64", low=0, high=int(table.shape[0])
                ), None
        if kind == "aten::layer_norm" and offset == 0:
            normalized = _ts_constant(args[1])
            if isinstance(normalized, list) and len(normalized) == 1:
                return InputSpec(name=name, shape=[None, None, int(normalized[0])]), None
    if "mask" in name.lower():
        return InputSpec(name=name, shape=[None, None], dtype="int64", low=1, high=2), None
    return None, f"'{name}': no consumer in the graph tells its shape"


def torchscript_signature(module: Any, traced: list[tuple[list[int], str]] | None = None) -> Signature:
    """The signature of a TorchScript module, read from its graph and the example inputs it was traced
    with (`traced_inputs`), else completed by probing sizes."""
    graph = module.inlined_graph
    values = list(graph.inputs())[1:]
    names = [_clean_name(v.debugName()) for v in values]
    if traced is not None and len(traced) != len(names):
        traced = None
    specs: list[InputSpec] = []
    missing: list[str] = []
    spatial: list[int] = []
    for i, (value, name) in enumerate(zip(values, names, strict=True)):
        spec, problem = _read_ts_input(module, value, name)
        if traced is not None:
            spec = _with_traced_shape(spec, name, *traced[i])
            problem = None
        if spec is None:
            missing.append(problem or name)
            continue
        if problem == "spatial":
            spatial.append(i)
        specs.append(spec)
    sig = Signature(inputs=specs, missing=missing, argument_names=names, source="graph")
    if traced is not None:
        sig.notes.append("shapes of the example inputs the module was traced with, batch axis dynamic")
    if missing or not specs:
        return sig
    # Sequence axes stay dynamic; images need a size the model accepts: try the usual ones on it.
    for i in spatial:
        spec = specs[i]
        side = _probe_side(module, specs, i)
        if side is None:
            sig.missing.append(
                f"'{spec.name}': the spatial size (the graph fixes only its {spec.shape[1]} channels and no "
                f"size in {list(PROBE_SIDES)} ran)"
            )
            continue
        specs[i] = spec.model_copy(update={"shape": [None, spec.shape[1], *([side] * (len(spec.shape) - 2))]})
        sig.notes.append(
            f"'{spec.name}': spatial size {side} is the first common size the model accepted (the graph "
            "does not state it); pass input_signature to choose another"
        )
    return sig


def _with_traced_shape(spec: InputSpec | None, name: str, shape: list[int], dtype: str) -> InputSpec:
    """The traced example's shape and dtype (batch axis dynamic), keeping what the graph told: the
    value range, and dynamic sequence axes of token ids."""
    traced = [None, *shape[1:]] if shape else []
    if spec is None:
        return _default_range(InputSpec(name=name, shape=traced, dtype=dtype), None)
    if len(spec.shape) == len(traced):
        traced = [
            None if g is None and i > 0 and spec.dtype.startswith("int") else t
            for i, (g, t) in enumerate(zip(spec.shape, traced, strict=True))
        ]
    return _default_range(spec.model_copy(update={"shape": traced, "dtype": dtype}), None)


_STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}


def traced_input_shapes(path: Any) -> list[tuple[list[int], str]] | None:
    """The shapes and dtypes of the example inputs `torch.jit.trace` stored in the archive
    (`<name>/traced_inputs.pkl`), or None. Read by an unpickler that knows only the few names such a
    file holds and turns them into plain shape records: no tensor is built, no other code is reached."""
    import pickle
    import zipfile
    from collections import OrderedDict

    class _Tensor(tuple):  # (shape, dtype)
        pass

    def rebuild(storage: str, _offset: int, size: tuple[int, ...], *_rest: Any) -> _Tensor:
        return _Tensor(([int(d) for d in size], storage))

    allowed = {
        ("torch.jit._pickle", "restore_type_tag"): lambda obj, _tag: obj,
        ("torch._utils", "_rebuild_tensor_v2"): rebuild,
        ("collections", "OrderedDict"): OrderedDict,
        **{("torch", k): v for k, v in _STORAGE_DTYPES.items()},
    }

    class _Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            try:
                return allowed[(module, name)]
            except KeyError:
                raise pickle.UnpicklingError(f"{module}.{name} is not part of traced inputs") from None

        def persistent_load(self, pid: Any) -> Any:
            return pid[1]  # ('storage', dtype name, key, location, numel)

    try:
        with zipfile.ZipFile(path) as archive:
            entries = [
                n for n in archive.namelist() if n.count("/") == 1 and n.endswith("/traced_inputs.pkl")
            ]
            if len(entries) != 1:
                return None
            import io

            stored = _Reader(io.BytesIO(archive.read(entries[0]))).load()
        args = stored.get("forward") if isinstance(stored, dict) else None
        if not isinstance(args, (list, tuple)) or not all(isinstance(a, _Tensor) for a in args):
            return None
        return [(list(a[0]), str(a[1])) for a in args]
    except Exception:  # noqa: BLE001 - anything unexpected: read the graph instead
        return None


def _probe_side(module: Any, specs: list[InputSpec], index: int) -> int | None:
    import torch

    from tools.runtime import synthesize_inputs

    for side in PROBE_SIDES:
        trial = list(specs)
        spec = specs[index]
        trial[index] = spec.model_copy(
            update={"shape": [None, spec.shape[1], *([side] * (len(spec.shape) - 2))]}
        )
        if any(j != index and len(s.shape) > 2 and s.shape[2] is None for j, s in enumerate(trial)):
            continue  # another image input still unsized: probe them one at a time
        inputs = synthesize_inputs(trial, batch_size=1, dynamic_len=8)
        try:
            with torch.inference_mode():
                module(*(torch.from_numpy(inputs[s.name]) for s in trial))
        except Exception:  # noqa: BLE001 - a size the model refuses; try the next
            continue
        return side
    return None


# ---------------------------------------------------------------------------------------------
# value ranges for files that state shapes (ONNX, torch.export)


def onnx_value_ranges(model: Any, specs: list[InputSpec]) -> list[InputSpec]:
    """Integer inputs that index a weight table (Gather) get its row count as their range."""
    tables = {t.name: list(t.dims) for t in model.graph.initializer}
    vocab: dict[str, int] = {}
    names = {s.name for s in specs}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) >= 2 and node.input[1] in names:
            dims = tables.get(node.input[0])
            if dims:
                vocab[node.input[1]] = max(vocab.get(node.input[1], 0), int(dims[0]))
    return [_default_range(s, vocab.get(s.name)) for s in specs]


def program_value_ranges(program: Any, specs: list[InputSpec]) -> list[InputSpec]:
    """As onnx_value_ranges for a torch.export program (aten.embedding on a parameter)."""
    import torch

    params = {**dict(program.named_parameters()), **dict(program.named_buffers())}
    lifted = {**program.graph_signature.inputs_to_parameters, **program.graph_signature.inputs_to_buffers}
    vocab: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.embedding.default:
            table, ids = node.args[0], node.args[1]
            weight = params.get(lifted.get(getattr(table, "name", ""), ""))
            ids_name = getattr(ids, "name", None)
            if weight is not None and ids_name is not None:
                vocab[ids_name] = int(weight.shape[0])
    return [_default_range(s, vocab.get(s.name)) for s in specs]


def _default_range(spec: InputSpec, vocabulary: int | None) -> InputSpec:
    if spec.low is not None or spec.high is not None:
        return spec
    integer = spec.dtype.startswith(("int", "uint"))
    if integer and vocabulary:
        return spec.model_copy(update={"low": 0, "high": vocabulary})
    if (integer or spec.dtype == "bool") and "mask" in spec.name.lower():
        return spec.model_copy(update={"low": 1, "high": 2})
    if spec.dtype == "uint8":
        return spec.model_copy(update={"low": 0, "high": 256})
    if spec.dtype.startswith("float") and len(spec.shape) == 4 and spec.shape[1] in (1, 3, 4):
        return spec.model_copy(update={"low": 0.0, "high": 1.0})
    return spec


# ---------------------------------------------------------------------------------------------
# a user's signature against the file's


def parse_signature(raw: Any) -> list[InputSpec]:
    """A user's `input_signature` (list of {name, shape, dtype, low?, high?}), validated."""
    if not isinstance(raw, list) or not raw:
        raise InvalidArgumentError(
            "input_signature must be a non-empty list of inputs",
            details='e.g. [{"name": "obs", "shape": [null, 64], "dtype": "float32"}]',
        )
    specs = []
    for i, item in enumerate(raw):
        try:
            spec = InputSpec.model_validate(item)
        except Exception as exc:  # pydantic ValidationError
            raise InvalidArgumentError(f"input_signature[{i}] is not an input: {exc}") from exc
        if spec.dtype not in DTYPES:
            raise InvalidArgumentError(
                f"input_signature[{i}] ('{spec.name}'): dtype '{spec.dtype}' is not one of "
                f"{', '.join(DTYPES)}"
            )
        if any(d is not None and d < 1 for d in spec.shape):
            raise InvalidArgumentError(
                f"input_signature[{i}] ('{spec.name}'): axes are positive sizes or null (dynamic), "
                f"got {spec.shape}"
            )
        if spec.low is not None and spec.high is not None and not spec.low < spec.high:
            raise InvalidArgumentError(
                f"input_signature[{i}] ('{spec.name}'): low ({spec.low}) must be below high ({spec.high})"
            )
        if math.prod(d or 1 for d in spec.shape) > 2**31:
            raise InvalidArgumentError(f"input_signature[{i}] ('{spec.name}'): the shape is too large")
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InvalidArgumentError(f"input_signature names repeat: {names}")
    return specs


def merge_signature(
    given: list[InputSpec], known: list[InputSpec], argument_names: list[str], *, dtypes_known: bool
) -> list[InputSpec]:
    """`given` over what the file states; DataMismatchError where it contradicts the graph.

    The graph's argument names fix the names and their order; known ranks and fixed axes must agree
    (a known dynamic axis may be fixed by the user, a known fixed one not changed); dtypes must agree
    where the file states them (ONNX, torch.export).
    """
    expected = argument_names or [s.name for s in known]
    if len(expected) == 1 and len(given) == 1:
        # One input is passed by position: the user's name for it (the data's array name) is kept.
        known = [k.model_copy(update={"name": given[0].name}) for k in known[:1]]
        expected = [given[0].name]
    if expected and sorted(s.name for s in given) != sorted(expected):
        raise DataMismatchError(
            f"input_signature names {[s.name for s in given]} do not match the model's inputs {expected}",
            details="name every input of the model's forward / graph, once",
        )
    by_name = {s.name: s for s in given}
    ordered = [by_name[n] for n in expected] if expected else list(given)
    known_by_name = {s.name: s for s in known}
    out = []
    for spec in ordered:
        have = known_by_name.get(spec.name)
        if have is not None:
            if len(have.shape) != len(spec.shape):
                raise DataMismatchError(
                    f"input '{spec.name}': input_signature gives rank {len(spec.shape)} {spec.shape}, the "
                    f"model's graph has rank {len(have.shape)} {have.shape}"
                )
            for axis, (g, k) in enumerate(zip(spec.shape, have.shape, strict=True)):
                if k is not None and g is not None and g != k:
                    raise DataMismatchError(
                        f"input '{spec.name}' axis {axis}: input_signature gives {g}, the model's graph "
                        f"fixes {k} (shape {have.shape})"
                    )
            if dtypes_known and have.dtype != spec.dtype:
                raise DataMismatchError(
                    f"input '{spec.name}': input_signature gives dtype {spec.dtype}, "
                    f"the model takes {have.dtype}"
                )
            shape = [g if g is not None else k for g, k in zip(spec.shape, have.shape, strict=True)]
            low = spec.low if spec.low is not None else have.low
            high = spec.high if spec.high is not None else have.high
            spec = spec.model_copy(update={"shape": shape, "low": low, "high": high})
        out.append(_default_range(spec, None))
    return out
