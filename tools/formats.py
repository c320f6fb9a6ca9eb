"""Upload safety: decide what a file is and whether it may be loaded, without running any of its code.

Every uploaded model or evaluation-data file passes through `validate_upload` / `validate_eval_data`
before it is stored as loadable. The checks follow the formats table of ARCHITECTURE.md:

- `.onnx`: parsed with `onnx.load(load_external_data=False)`; tensors stored outside the file are
  refused (a path in the file could point anywhere on the server).
- `.pt` / `.pth`: a zip archive (torch.save, TorchScript) or a legacy pickle stream. Every pickle
  inside is scanned opcode by opcode with `pickletools` *before* anything loads it; a global that is
  not on torch's weights-only allowlist (os.system, builtins.eval, ...) refuses the file, naming it.
  State dicts are then loaded with `torch.load(weights_only=True)` as a second guard.
- `.pt2` (torch.export): zip archive; its nested pickles are scanned the same way.
- `.safetensors`: header length, JSON header, dtypes, shapes and offsets checked against the file size.
- `.h5`: opened with h5py, `model_config` parsed, Keras `Lambda` layers (serialized Python code) refused.
- `.pb`: checked to be a well-formed protobuf message; stored for inspection only.
- A directory (an extracted `.zip` / `.tar` / `.tar.gz`, see tools.archives): a Hugging Face
  transformers directory, checked by tools.model_dirs (config as data, safetensors headers against the
  index, pickled weights through the scanner, no remote code).

Content must match the extension: a zip renamed `.onnx` or an ONNX graph renamed `.pt` is refused.
"""

from __future__ import annotations

import io
import json
import math
import pickletools
import re
import struct
import zipfile
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from tools.archives import ARCHIVE_EXTENSIONS  # model directories, packed
from tools.errors import InvalidModelError, UnsafeModelError, UnsupportedFormatError
from tools.handle import EvalData, InputSpec

UploadFormat = Literal[
    "onnx", "torchscript", "pt2", "state_dict", "safetensors", "hf_directory", "keras_h5", "tensorflow_pb"
]

MODEL_EXTENSIONS = (".onnx", ".pt", ".pth", ".pt2", ".safetensors", ".h5", ".pb", *ARCHIVE_EXTENSIONS)
EVAL_DATA_EXTENSIONS = (".npz", ".safetensors")

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# torch.save's legacy (non-zip) format starts with a pickled magic number: PROTO 2, LONG1 10 bytes.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_PICKLE_PROTOCOLS = {b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"}

_SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class FormatReport(BaseModel):
    """What an uploaded file is; `loadable` is False for formats stored for inspection only (.pb, .h5)."""

    format: UploadFormat
    extension: str
    size_bytes: int
    loadable: bool = True
    is_torchscript: bool = False
    opset: int | None = None
    tensor_count: int | None = None
    parameter_count: int | None = None
    inputs: list[InputSpec] | None = Field(
        default=None, description="Input signature when the file states it (ONNX graph inputs)."
    )
    details: dict[str, Any] = Field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# entry points


def validate_upload(path: Path, extension: str) -> FormatReport:
    """Check an uploaded model file (or an extracted model directory); raise UnsafeModelError /
    InvalidModelError / UnsupportedFormatError."""
    path = Path(path)
    if path.is_dir():
        from tools.model_dirs import validate_model_directory

        return validate_model_directory(path, extension=extension)
    ext = _normalize_extension(extension)
    if ext in ARCHIVE_EXTENSIONS:
        raise UnsupportedFormatError(
            f"a '{ext}' archive is validated as the model directory it holds: extract it first "
            "(tools.archives.extract_archive) and validate the directory"
        )
    if ext not in MODEL_EXTENSIONS:
        raise UnsupportedFormatError(
            f"files ending in '{ext}' are not accepted; use one of {', '.join(MODEL_EXTENSIONS)}"
        )
    size = _size_or_fail(path)
    head = _read_head(path, 16)
    if ext == ".onnx":
        return _validate_onnx(path, ext, size, head)
    if ext in (".pt", ".pth"):
        return _validate_torch(path, ext, size, head)
    if ext == ".pt2":
        return _validate_pt2(path, ext, size, head)
    if ext == ".safetensors":
        header = _check_safetensors(path, size)
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        return FormatReport(
            format="safetensors",
            extension=ext,
            size_bytes=size,
            tensor_count=len(tensors),
            parameter_count=sum(math.prod(v["shape"]) for v in tensors.values()),
            details={
                "dtypes": sorted({v["dtype"] for v in tensors.values()}),
                "metadata": header.get("__metadata__") or {},
            },
        )
    if ext == ".h5":
        return _validate_h5(path, ext, size, head)
    return _validate_pb(path, ext, size, head)


def validate_eval_data(path: Path, extension: str) -> EvalData:
    """Load evaluation data (.npz without pickles, or .safetensors): numeric arrays, optional `targets`."""
    path = Path(path)
    ext = _normalize_extension(extension)
    if ext not in EVAL_DATA_EXTENSIONS:
        raise UnsupportedFormatError(
            f"evaluation data must be {' or '.join(EVAL_DATA_EXTENSIONS)}, not '{ext}'"
        )
    _size_or_fail(path)
    arrays: dict[str, np.ndarray]
    if ext == ".npz":
        if _read_head(path, 4) != _ZIP_MAGIC:
            raise InvalidModelError("the evaluation data is not an .npz archive (no zip header)")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: np.asarray(npz[name]) for name in npz.files}
        except ValueError as exc:
            if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
                raise UnsafeModelError(
                    "the .npz holds object arrays, which need pickle to load; save numeric arrays only"
                ) from exc
            raise InvalidModelError(f"the .npz file could not be read: {exc}") from exc
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InvalidModelError(f"the .npz file is corrupt or truncated: {exc}") from exc
    else:
        _check_safetensors(path, path.stat().st_size)
        from safetensors.numpy import load_file

        try:
            arrays = dict(load_file(str(path)))
        except Exception as exc:  # safetensors raises its own error types
            raise InvalidModelError(f"the .safetensors file could not be read: {exc}") from exc

    targets = arrays.pop("targets", None)
    if not arrays:
        raise InvalidModelError("the evaluation data holds no input arrays (only 'targets' or nothing)")
    for name, arr in [*arrays.items(), *([("targets", targets)] if targets is not None else [])]:
        if arr.dtype.kind not in "biuf":
            raise InvalidModelError(f"array '{name}' has dtype {arr.dtype}; only numeric arrays are accepted")
        if arr.ndim == 0:
            raise InvalidModelError(f"array '{name}' is a scalar; the first axis must index samples")
    counts = {name: arr.shape[0] for name, arr in arrays.items()}
    if targets is not None:
        counts["targets"] = targets.shape[0]
    if len(set(counts.values())) != 1:
        raise InvalidModelError(f"arrays disagree on the number of samples (first axis): {counts}")
    if next(iter(counts.values())) == 0:
        raise InvalidModelError("the evaluation data holds zero samples")
    return EvalData(inputs=arrays, targets=targets)


# ---------------------------------------------------------------------------------------------
# helpers shared by the format checks


def _normalize_extension(extension: str) -> str:
    ext = extension.strip().lower()
    return ext if ext.startswith(".") else f".{ext}"


def _size_or_fail(path: Path) -> int:
    if not path.is_file():
        raise InvalidModelError(f"no file at {path.name}")
    size = path.stat().st_size
    if size == 0:
        raise InvalidModelError("the file is empty")
    return size


def _read_head(path: Path, n: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _sniff(head: bytes) -> str:
    """A coarse content type from the first bytes, for 'content does not match extension' messages."""
    if head.startswith(_ZIP_MAGIC):
        return "zip"
    if head.startswith(_HDF5_MAGIC):
        return "hdf5"
    if head[:2] in _PICKLE_PROTOCOLS:
        return "pickle"
    return "unknown"


def _mismatch(ext: str, found: str) -> InvalidModelError:
    names = {
        "zip": "a zip archive",
        "hdf5": "an HDF5 file",
        "pickle": "a Python pickle",
        "onnx": "an ONNX model",
    }
    return InvalidModelError(f"the file's content is {names.get(found, found)}, which does not match '{ext}'")


# ---------------------------------------------------------------------------------------------
# pickle scanning


def _allowed_globals() -> set[str]:
    """torch's weights-only allowlist (tensor rebuilders, storages, dtypes, OrderedDict, ...)."""
    from torch import _weights_only_unpickler as wou

    allowed = set(wou._get_allowed_globals())
    allowed.update(wou._get_user_allowed_globals())
    return allowed


def _torchscript_global(module: str, name: str) -> bool:
    # TorchScript archives name their compiled classes `__torch__.*`; the C++ unpickler resolves them
    # against the archive's own compiled code, never by importing Python.
    return module == "__torch__" or module.startswith("__torch__.") or module == "torch.jit._pickle"


def _python3_name(module: str, name: str) -> str:
    """Protocol-2 pickles spell Python 3 names the Python 2 way (__builtin__.eval); map them back."""
    import _compat_pickle

    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


class _PickleScan:
    """Globals a pickle references, found from its opcodes without unpickling anything."""

    def __init__(self) -> None:
        self.globals: list[str] = []
        self.unresolved = False

    def scan(self, stream: io.BytesIO) -> None:
        memo: dict[int, Any] = {}
        strings: list[Any] = []  # recent pushes, strings or None, for STACK_GLOBAL's two arguments
        last: Any = None
        next_memo = 0
        for opcode, arg, _pos in pickletools.genops(stream):
            name = opcode.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                self.globals.append(_python3_name(module, attr))
                last = None
            elif name == "STACK_GLOBAL":
                if len(strings) >= 2 and isinstance(strings[-2], str) and isinstance(strings[-1], str):
                    self.globals.append(_python3_name(strings[-2], strings[-1]))
                else:
                    self.unresolved = True
                last = None
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING",
                          "BINSTRING", "SHORT_BINSTRING"):  # fmt: skip
                last = (
                    arg if isinstance(arg, str) else arg.decode("latin-1") if isinstance(arg, bytes) else arg
                )
                strings.append(last)
                continue
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = last
                continue
            elif name == "MEMOIZE":
                memo[next_memo] = last
                next_memo += 1
                continue
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(int(arg))
                strings.append(last)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                # The copyreg extension registry maps codes to arbitrary globals.
                self.globals.append(f"<extension code {arg}>")
            else:
                last = None
            strings.append(None)
            if len(strings) > 64:
                del strings[:-8]


def _scan_pickle_bytes(data: bytes, *, what: str, torchscript: bool = False, count: int = 1) -> int:
    """Scan `count` consecutive pickles in `data`; raise UnsafeModelError on any code."""
    return _scan_pickle_stream(io.BytesIO(data), what=what, torchscript=torchscript, count=count)


def _scan_pickle_stream(stream: IO[bytes], *, what: str, torchscript: bool = False, count: int = 1) -> int:
    """Scan `count` consecutive pickles read from `stream` (never loaded whole); return bytes read."""
    scan = _PickleScan()
    broken: Exception | None = None
    try:
        for _ in range(count):
            scan.scan(stream)
    except (ValueError, EOFError, struct.error, UnicodeDecodeError) as exc:
        broken = exc  # code found before the break still names the file as unsafe (checked first)
    allowed = _allowed_globals()
    offending = sorted(
        {
            g
            for g in scan.globals
            if g not in allowed and not (torchscript and _torchscript_global(*g.rsplit(".", 1)))
        }
    )
    if offending:
        raise UnsafeModelError(
            f"{what} needs code to load and was not unpickled: it references {', '.join(offending)}",
            details="Only tensors, containers and torch's allow-listed types may appear in a model file. "
            "Save a state_dict (torch.save(model.state_dict(), path)) or export to ONNX.",
        )
    if scan.unresolved:
        raise UnsafeModelError(
            f"{what} builds a global from computed names (STACK_GLOBAL without literal strings) and was not "
            "unpickled"
        )
    if broken is not None:
        raise InvalidModelError(f"{what} is truncated or not a valid pickle: {broken}") from broken
    return stream.tell()


# torch.save stores each tensor storage raw as `<archive>/data/<key>`: never a pickle, skipped unread.
_RAW_STORAGE = re.compile(r"(^|/)data/\d+$")


def _scan_torch_zip(archive: zipfile.ZipFile, *, what: str, torchscript: bool) -> int:
    """Scan every pickle in a torch zip archive (and nested torch.save archives); return how many.

    Entries are streamed, so a large archive is checked without reading its tensors into memory.
    """
    count = 0
    try:
        for info in archive.infolist():
            name = info.filename
            if info.is_dir() or _RAW_STORAGE.search(name):
                continue
            is_pickle_name = name.endswith(".pkl") or name.endswith(".debug_pkl")
            with archive.open(info) as fh:
                head = fh.read(4)
            where = f"{what} ({name})"
            if head.startswith(_ZIP_MAGIC):
                with archive.open(info) as fh, zipfile.ZipFile(fh) as nested:
                    count += _scan_torch_zip(nested, what=where, torchscript=torchscript)
            elif is_pickle_name or head[:2] in _PICKLE_PROTOCOLS:
                if not is_pickle_name:
                    with archive.open(info) as fh:
                        if not _looks_like_pickle(fh):
                            continue  # raw tensor bytes that happen to start like a pickle
                with archive.open(info) as fh:
                    _scan_pickle_stream(fh, what=where, torchscript=torchscript)
                count += 1
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
        raise InvalidModelError(f"{what} is corrupt or truncated: {exc}") from exc
    return count


def _looks_like_pickle(stream: IO[bytes]) -> bool:
    """A raw tensor payload may start with 0x80 by chance; a pickle parses and ends in STOP."""
    try:
        for op, _arg, _pos in pickletools.genops(stream):
            if op.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - any parse failure means "not a pickle"
        return False
    return False


# ---------------------------------------------------------------------------------------------
# per-format checks


def _validate_onnx(path: Path, ext: str, size: int, head: bytes) -> FormatReport:
    kind = _sniff(head)
    if kind != "unknown":
        raise _mismatch(ext, kind)
    import onnx
    from onnx import external_data_helper

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise InvalidModelError(f"the file is not a valid ONNX model (truncated or corrupt): {exc}") from exc
    if (
        model.ir_version <= 0
        or not model.HasField("graph")
        or (len(model.graph.node) == 0 and len(model.graph.output) == 0)
    ):
        raise InvalidModelError("the file parses as protobuf but holds no ONNX graph")
    external = [
        t.name
        for t in external_data_helper._get_all_tensors(model)
        if external_data_helper.uses_external_data(t)
    ]
    if external:
        raise UnsafeModelError(
            f"the ONNX model stores {len(external)} tensor(s) in external files ({', '.join(external[:5])}); "
            "external data is not accepted. Save it as one file: "
            "onnx.save_model(model, path, save_as_external_data=False)",
        )
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise InvalidModelError(f"the ONNX model is malformed: {exc}") from exc
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return FormatReport(
        format="onnx",
        extension=ext,
        size_bytes=size,
        opset=opset,
        tensor_count=len(model.graph.initializer),
        parameter_count=sum(math.prod(t.dims) for t in model.graph.initializer),
        inputs=onnx_input_specs(model),
        details={
            "ir_version": model.ir_version,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "nodes": len(model.graph.node),
            "outputs": [o.name for o in model.graph.output],
        },
    )


def onnx_input_specs(model: Any) -> list[InputSpec]:
    """Graph inputs that are not initializers; symbolic or unknown dims become None."""
    from onnx import helper

    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        shape: list[int | None] = [
            int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in tensor_type.shape.dim
        ]
        try:
            dtype = str(np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)))
        except (KeyError, TypeError):
            dtype = "float32"
        specs.append(InputSpec(name=value.name, shape=shape, dtype=dtype))
    return specs


def _validate_torch(path: Path, ext: str, size: int, head: bytes) -> FormatReport:
    kind = _sniff(head)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                is_torchscript = any(n.endswith("constants.pkl") for n in names) or any(
                    "/code/" in n or n.startswith("code/") for n in names
                )
                if any(n.endswith("archive_format") for n in names) and not is_torchscript:
                    raise InvalidModelError(
                        f"the file is a torch.export program archive; upload it as '.pt2', not '{ext}'"
                    )
                if not any(n.endswith("data.pkl") for n in names):
                    raise InvalidModelError("the zip archive is not a torch model (no data.pkl inside)")
                pickles = _scan_torch_zip(archive, what="the model file", torchscript=is_torchscript)
        except zipfile.BadZipFile as exc:
            raise InvalidModelError(f"the model archive is corrupt or truncated: {exc}") from exc
        if is_torchscript:
            return _load_torchscript_report(path, ext, size, pickles)
        return _load_state_dict_report(path, ext, size, {"container": "zip", "pickles": pickles})
    if kind == "pickle":
        # torch's legacy format is five pickles (magic, protocol, sys info, object, storage keys), then raw
        # storage bytes; a plain pickle is one.
        is_torch = _read_head(path, len(_TORCH_LEGACY_MAGIC)) == _TORCH_LEGACY_MAGIC
        with path.open("rb") as fh:
            _scan_pickle_stream(fh, what="the model file", count=5 if is_torch else 1)
        if not is_torch:
            raise InvalidModelError(
                "the file is a plain Python pickle, not a torch.save file; save the weights with "
                "torch.save(model.state_dict(), path)"
            )
        return _load_state_dict_report(path, ext, size, {"container": "legacy_pickle"})
    if kind == "unknown" and _parses_as_onnx(path):
        raise _mismatch(ext, "onnx")
    if kind == "hdf5":
        raise _mismatch(ext, kind)
    raise InvalidModelError(
        f"the file is not a PyTorch model: '{ext}' must hold a torch.save archive, a legacy torch pickle, "
        "or TorchScript"
    )


def _load_torchscript_report(path: Path, ext: str, size: int, pickles: int) -> FormatReport:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise InvalidModelError(f"the TorchScript archive could not be loaded: {exc}") from exc
    params = list(module.parameters())
    return FormatReport(
        format="torchscript",
        extension=ext,
        size_bytes=size,
        is_torchscript=True,
        tensor_count=len(module.state_dict()),
        parameter_count=sum(p.numel() for p in params),
        details={"container": "zip", "pickles": pickles, "dtypes": sorted({str(p.dtype) for p in params})},
    )


def _load_state_dict_report(path: Path, ext: str, size: int, details: dict[str, Any]) -> FormatReport:
    import pickle

    import torch

    try:
        # mmap: a large zip checkpoint is inspected without reading its tensors into memory.
        mmap = details.get("container") == "zip"
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        # The opcode scan passed, yet the weights-only unpickler refused: still refuse, never retry unsafely.
        raise UnsafeModelError(f"the file needs code to load and was not unpickled: {exc}") from exc
    except Exception as exc:
        raise InvalidModelError(f"the PyTorch file could not be read (truncated or corrupt): {exc}") from exc
    state = extract_state_dict(obj)
    if state is None:
        raise InvalidModelError(
            "the file holds no state_dict (a mapping of parameter names to tensors); "
            "save it with torch.save(model.state_dict(), path)"
        )
    return FormatReport(
        format="state_dict",
        extension=ext,
        size_bytes=size,
        tensor_count=len(state),
        parameter_count=sum(t.numel() for t in state.values()),
        details={**details, "dtypes": sorted({str(t.dtype) for t in state.values()})},
    )


def extract_state_dict(obj: Any) -> dict[str, Any] | None:
    """A flat name -> tensor mapping from what torch.load returned (plain or under 'state_dict'/'model')."""
    import torch

    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
    return None


def check_pickled_weights(path: Path, *, what: str) -> dict[str, Any]:
    """A pickled state dict (`pytorch_model.bin`): every pickle scanned first, then loaded with
    `torch.load(weights_only=True)` (memory-mapped when it is a zip). Returns the name -> tensor mapping
    (the caller reads names, shapes and dtypes); UnsafeModelError / InvalidModelError name `what`."""
    import pickle

    import torch

    size = _size_or_fail(path)
    kind = _sniff(_read_head(path, 16))
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                if not any(n.endswith("data.pkl") for n in names):
                    raise InvalidModelError(
                        f"{what} is a zip archive but not a torch.save file (no data.pkl)"
                    )
                if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                    raise InvalidModelError(f"{what} is TorchScript, not a state dict of weights")
                _scan_torch_zip(archive, what=what, torchscript=False)
        except zipfile.BadZipFile as exc:
            raise InvalidModelError(f"{what} is corrupt or truncated: {exc}") from exc
    elif kind == "pickle":
        is_torch = _read_head(path, len(_TORCH_LEGACY_MAGIC)) == _TORCH_LEGACY_MAGIC
        with path.open("rb") as fh:
            _scan_pickle_stream(fh, what=what, count=5 if is_torch else 1)
        if not is_torch:
            raise InvalidModelError(f"{what} is a plain Python pickle, not a torch.save file")
    else:
        raise InvalidModelError(f"{what} is not a torch.save file ({size} bytes of unknown content)")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=kind == "zip")
    except pickle.UnpicklingError as exc:
        raise UnsafeModelError(f"{what} needs code to load and was not unpickled: {exc}") from exc
    except Exception as exc:
        raise InvalidModelError(f"{what} could not be read (truncated or corrupt): {exc}") from exc
    state = extract_state_dict(obj)
    if state is None:
        raise InvalidModelError(f"{what} holds no state dict (a mapping of parameter names to tensors)")
    return state


def check_safetensors_file(path: Path, *, what: str) -> dict[str, Any]:
    """`_check_safetensors` with the file named in its errors; returns the header."""
    try:
        return _check_safetensors(path, _size_or_fail(path))
    except (InvalidModelError, UnsafeModelError) as exc:
        raise type(exc)(f"{what}: {exc.message}", details=exc.details) from exc


def _parses_as_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX
        return False
    return model.ir_version > 0 and model.HasField("graph") and len(model.graph.node) > 0


def _validate_pt2(path: Path, ext: str, size: int, head: bytes) -> FormatReport:
    if not head.startswith(_ZIP_MAGIC):
        kind = _sniff(head)
        if kind == "unknown" and _parses_as_onnx(path):
            kind = "onnx"
        raise (
            _mismatch(ext, kind)
            if kind != "unknown"
            else InvalidModelError("the file is not a torch.export archive (no zip header)")
        )
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n.endswith("archive_format") for n in names) or not any(
                "/models/" in n or n.startswith("models/") for n in names
            ):
                raise InvalidModelError("the zip archive is not a torch.export program (.pt2)")
            pickles = _scan_torch_zip(archive, what="the exported program", torchscript=False)
            bad = archive.testzip()
            if bad is not None:
                raise InvalidModelError(f"the archive entry {bad} is corrupt")
    except zipfile.BadZipFile as exc:
        raise InvalidModelError(f"the .pt2 archive is corrupt or truncated: {exc}") from exc
    return FormatReport(format="pt2", extension=ext, size_bytes=size, details={"pickles": pickles})


def _check_safetensors(path: Path, size: int) -> dict[str, Any]:
    """Parse and check a safetensors header against the file; return it."""
    if size < 8:
        raise InvalidModelError("the .safetensors file is shorter than its 8-byte header length")
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len == 0 or header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
            kind = _sniff(_read_head(path, 16))
            if kind != "unknown":
                raise _mismatch(".safetensors", kind)
            raise InvalidModelError(
                f"the .safetensors header claims {header_len} bytes but the file has {size - 8} after it; "
                "the file is truncated or not safetensors"
            )
        raw = fh.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"the .safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise InvalidModelError("the .safetensors header is not a JSON object")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            if entry is not None and not isinstance(entry, dict):
                raise InvalidModelError("the .safetensors __metadata__ is not an object")
            continue
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
            raise InvalidModelError(f"tensor '{name}' has an incomplete header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _SAFETENSORS_DTYPE_BYTES:
            raise InvalidModelError(f"tensor '{name}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidModelError(f"tensor '{name}' has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise InvalidModelError(f"tensor '{name}' has invalid data offsets {offsets!r}")
        expected = math.prod(shape) * _SAFETENSORS_DTYPE_BYTES[dtype]
        if offsets[1] - offsets[0] != expected:
            raise InvalidModelError(
                f"tensor '{name}' spans {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {expected}"
            )
        if offsets[1] > data_len:
            raise InvalidModelError(
                f"tensor '{name}' ends at byte {offsets[1]} but the data section has {data_len}: "
                "the file is truncated"
            )
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise InvalidModelError(f"tensor '{name}' overlaps another or leaves a gap at byte {position}")
        position = end
    if position != data_len:
        raise InvalidModelError(
            f"the tensors cover {position} bytes but the data section holds {data_len}; the file is malformed"
        )
    return header


def _validate_h5(path: Path, ext: str, size: int, head: bytes) -> FormatReport:
    if not head.startswith(_HDF5_MAGIC):
        kind = _sniff(head)
        raise _mismatch(ext, kind) if kind != "unknown" else InvalidModelError("the file is not HDF5 (.h5)")
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            raw = h5.attrs.get("model_config")
            keras_version = h5.attrs.get("keras_version")
            datasets: list[int] = []
            h5.visititems(
                lambda _n, obj: datasets.append(obj.size) if isinstance(obj, h5py.Dataset) else None
            )
    except OSError as exc:
        raise InvalidModelError(f"the HDF5 file could not be opened (truncated or corrupt): {exc}") from exc
    details: dict[str, Any] = {"conversion": "convert it to ONNX with tf2onnx (or keras2onnx) to optimize it"}
    if keras_version is not None:
        details["keras_version"] = (
            keras_version.decode() if isinstance(keras_version, bytes) else str(keras_version)
        )
    if raw is not None:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidModelError(f"the Keras model_config is not valid JSON: {exc}") from exc
        lambdas = _keras_lambda_layers(config)
        if lambdas:
            raise UnsafeModelError(
                f"the Keras model contains Lambda layers ({', '.join(lambdas[:5])}), which hold "
                "serialized Python code; they are refused",
            )
        details["model_class"] = config.get("class_name") if isinstance(config, dict) else None
        details["layers"] = _keras_layer_count(config)
    else:
        details["model_config"] = None
    return FormatReport(
        format="keras_h5",
        extension=ext,
        size_bytes=size,
        loadable=False,
        tensor_count=len(datasets),
        parameter_count=int(sum(datasets)),
        details=details,
    )


def _keras_lambda_layers(config: Any) -> list[str]:
    found: list[str] = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            cfg = config.get("config") or {}
            found.append(str(cfg.get("name", "lambda")) if isinstance(cfg, dict) else "lambda")
        for value in config.values():
            found.extend(_keras_lambda_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_keras_lambda_layers(value))
    return found


def _keras_layer_count(config: Any) -> int | None:
    if isinstance(config, dict):
        layers = (
            (config.get("config") or {}).get("layers") if isinstance(config.get("config"), dict) else None
        )
        if isinstance(layers, list):
            return len(layers)
    return None


def _validate_pb(path: Path, ext: str, size: int, head: bytes) -> FormatReport:
    kind = _sniff(head)
    if kind != "unknown":
        raise _mismatch(ext, kind)
    if _parses_as_onnx(path):
        raise _mismatch(ext, "onnx")
    data = path.read_bytes()
    fields = _protobuf_field_count(data)
    return FormatReport(
        format="tensorflow_pb",
        extension=ext,
        size_bytes=size,
        loadable=False,
        details={
            "top_level_fields": fields,
            "conversion": "convert it to ONNX with tf2onnx (python -m tf2onnx.convert) to optimize it",
        },
    )


def _protobuf_field_count(data: bytes) -> int:
    """Walk the top level of a protobuf message; raise InvalidModelError unless it is well-formed."""
    pos, count, n = 0, 0, len(data)

    def varint() -> int:
        nonlocal pos
        shift, value = 0, 0
        while True:
            if pos >= n:
                raise InvalidModelError("the .pb file is truncated (a varint runs past the end)")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise InvalidModelError("the .pb file is not a protobuf message (varint too long)")

    while pos < n:
        key = varint()
        field, wire = key >> 3, key & 7
        if field == 0:
            raise InvalidModelError("the .pb file is not a protobuf message (field number 0)")
        if wire == 0:
            varint()
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length = varint()  # read before adding: varint() advances pos itself
            pos += length
        elif wire == 5:
            pos += 4
        else:
            raise InvalidModelError(f"the .pb file is not a protobuf message (wire type {wire})")
        if pos > n:
            raise InvalidModelError("the .pb file is truncated (a field runs past the end)")
        count += 1
    return count
