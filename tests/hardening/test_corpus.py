"""The hostile corpus (tests/corpus/make_corpus.py) against the real API of a live server.

Each file is uploaded through POST /models/upload and must be refused with a 4xx in the error format,
with nothing executed (its canary marker never appears), nothing stored (artifact and upload
directories unchanged) and no model row added. A second test shows the payloads are live: loaded
directly (torch.load(weights_only=False) or pickle.loads) each one writes its marker.
"""

from __future__ import annotations

import collections
import io
import pickle
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import LiveServerFactory
from tests.corpus.make_corpus import Case, build_all, cases
from tests.hardening.conftest import files_under, login, model_ids, upload

ERROR_KEYS = {"error", "message", "details"}


def test_corpus_is_large_and_covers_the_issue() -> None:
    names = {c.name for c in cases()}
    assert len(names) == len(cases()) >= 30
    for needed in (
        *(f"reduce_protocol{p}" for p in range(6)),
        "inst", "obj", "newobj_ex", "build", "torchscript_data_pkl", "torchscript_constants_pkl",
        "pt2_nested_archive", "onnx_external_absolute", "onnx_external_traversal", "tar_symlink",
        "onnx_absurd_initializer", "onnx_deep_subgraphs", "onnx_future_opset", "onnx_future_ir",
        "safetensors_header_overflow", "safetensors_overlap", "safetensors_out_of_file",
        "safetensors_dtype_shape_mismatch", "h5_lambda_nested", "polyglot_pickle_then_zip",
    ):  # fmt: skip
        assert needed in names, needed
    assert {c.filename.rsplit(".", 1)[-1] for c in cases() if c.name.startswith("truncated_")} >= {
        "onnx", "pt", "pt2", "safetensors", "h5", "pb", "zip"
    }  # fmt: skip


def test_every_hostile_file_is_refused_with_nothing_run_or_kept(
    live_server_factory: LiveServerFactory, tmp_path: Path
) -> None:
    built = build_all(tmp_path / "corpus", tmp_path / "service-markers")
    server = live_server_factory(env={"MAX_UPLOAD_MB": "5"})
    headers = login(server.base_url)
    artifacts, uploads = server.data_dir / "artifacts", server.data_dir / "uploads"
    before_files = files_under(artifacts) | files_under(uploads)
    before_models = model_ids(server, headers)
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    rows = []
    for case, path, marker in built:
        r = upload(server.base_url, headers, path, filename=case.filename, **dict(case.fields))
        body = r.json()
        rows.append(f"  {case.name:34s} {r.status_code} {body.get('error')}: {str(body.get('message'))[:90]}")
        assert 400 <= r.status_code < 500, (case.name, r.status_code, body)
        assert set(body) == ERROR_KEYS and body["message"], (case.name, body)
        assert not marker.exists(), f"{case.name}: the payload ran on the server"
        assert files_under(artifacts) | files_under(uploads) == before_files, case.name
        outcomes[f"{r.status_code} {body['error']}"] += 1
        if case.direct:  # a pickle that would run code is refused as unsafe, not as merely broken
            assert body["error"] == "unsafe_model", (case.name, body)
    assert model_ids(server, headers) == before_models
    assert not Path("/tmp/robopt-escaped.txt").exists()
    log = server.log_tail(2_000_000)
    assert "Traceback" not in log and "payload ran" not in log
    print(
        f"\ncorpus: {len(built)} hostile files, {sum(outcomes.values())} refused with a 4xx, 0 executed, "
        f"0 kept, in {time.monotonic() - started:.1f} s"
    )
    print("refusals: " + ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    print("\n".join(rows))


def _load_directly(case: Case, path: Path) -> None:
    """What an unguarded loader does with the file: the way the payload was built to be reached."""
    import torch

    how, _, member = (case.direct or "").partition(":")
    data = path.read_bytes()
    if member:
        with zipfile.ZipFile(path) as archive:
            name = next(n for n in archive.namelist() if n.endswith(member))
            data = archive.read(name)
    if how == "torch.load":
        torch.load(io.BytesIO(data), weights_only=False)
    else:
        pickle.loads(data)


@pytest.mark.parametrize("case", [c for c in cases() if c.direct], ids=lambda c: c.name)
def test_each_payload_runs_when_loaded_directly(case: Case, tmp_path: Path) -> None:
    path = tmp_path / case.filename
    marker = tmp_path / "direct.ran"
    case.build(path, marker)
    try:
        _load_directly(case, path)
    except Exception:  # noqa: BLE001 - the payload runs before the rest of the file fails to load
        pass
    assert marker.read_text() == "payload ran\n" or marker.read_text() == "payload ran"
