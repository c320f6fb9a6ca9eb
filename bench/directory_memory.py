"""Memory of a Hugging Face checkpoint directory on its way in: extraction, validation, loading.

    python bench/directory_memory.py [--layers 12] [--width 768] [--shard-mb 150] [--keep DIR]

Writes a BERT checkpoint built from a config (random weights; BERT-base at the defaults: 110 M
parameters, 418 MiB of fp32 safetensors in four shards with their index), packs it as a stored .zip
and a .tar.gz, and measures, each in a fresh process after the libraries are imported (so that import
costs are not counted), the growth of resident memory over the step:

- extract: tools.archives.extract_archive of each archive (streamed member by member);
- validate: tools.formats.validate_upload of the directory (headers and config only);
- load: tools.loading.load_model (transformers from_pretrained on the meta device, safetensors
  memory-mapped), then one forward pass at batch 1, which touches every weight;
- naive: the same model built by reading every shard with safetensors.torch.load_file and then
  load_state_dict: the baseline a loader that reads the weights first pays (two copies).

RSS is split into anonymous memory (the process's own copies) and file-backed pages (the shards'
page cache, shared and reclaimable), read from /proc/self/status (Linux only). Prints one JSON line
per step and a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys, time
from pathlib import Path

def status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out

step, path = sys.argv[1], Path(sys.argv[2])
import torch, transformers
from tools.archives import archive_extension, extract_archive
from tools.formats import validate_upload
from tools.loading import load_model
from tools.runtime import output_values, synthesize_inputs
import tools.model_dirs, tools.evaluation
transformers.BertModel, transformers.BertConfig  # the modeling code imported before measuring
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark: what follows is the step's own
base, start = status(), time.perf_counter()
keep = None
if step == "extract":
    keep = extract_archive(path, path.parent / "unpacked", extension=archive_extension(path.name))
elif step == "validate":
    keep = validate_upload(path, "")
elif step == "load":
    keep = load_model(path)
    with torch.inference_mode():
        output_values(keep, synthesize_inputs(keep.inputs, batch_size=1))
elif step == "naive":
    from safetensors.torch import load_file
    state = {}
    for shard in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(shard)))
    keep = transformers.BertModel(transformers.BertConfig.from_pretrained(path))
    keep.load_state_dict(state)
    with torch.inference_mode():
        keep(input_ids=torch.zeros(1, 16, dtype=torch.long))
end = status()
print(json.dumps({
    "step": step,
    "input": path.name,
    "seconds": round(time.perf_counter() - start, 2),
    "peak_growth_mb": round(end["VmHWM"] - base["VmRSS"], 1),
    "anon_growth_mb": round(end["RssAnon"] - base["RssAnon"], 1),
    "file_backed_growth_mb": round(end["RssFile"] - base["RssFile"], 1),
}))
"""


def write_checkpoint(directory: Path, layers: int, width: int, shard_mb: int) -> int:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64),
        intermediate_size=4 * width,
    )
    model = BertModel(config)
    model.save_pretrained(directory, max_shard_size=f"{shard_mb}MB")
    return sum(p.numel() for p in model.parameters())


def pack(directory: Path, root: Path) -> list[Path]:
    stored = root / "checkpoint.zip"
    with zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(directory.iterdir()):
            zf.write(path, f"{directory.name}/{path.name}")
    gz = root / "checkpoint.tar.gz"
    with tarfile.open(gz, "w:gz", compresslevel=1) as tf:
        for path in sorted(directory.iterdir()):
            tf.add(path, f"{directory.name}/{path.name}")
    return [stored, gz]


def measure(step: str, path: Path) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, step, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("{")][-1]
    return json.loads(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--shard-mb", type=int, default=150)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    args = parser.parse_args()
    if not Path("/proc/self/clear_refs").exists():
        print("needs Linux (/proc/self/status, clear_refs)", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="robopt-dirmem-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        directory = root / "bert"
        params = write_checkpoint(directory, args.layers, args.width, args.shard_mb)
        size_mb = sum(p.stat().st_size for p in directory.iterdir()) / 2**20
        print(f"checkpoint: {params / 1e6:.1f} M parameters, {size_mb:.1f} MiB in {directory}")
        rows = []
        for archive in pack(directory, root):
            rows.append(measure("extract", archive))
            shutil.rmtree(archive.parent / "unpacked", ignore_errors=True)
        for step in ("validate", "load", "naive"):
            rows.append(measure(step, directory))
        for row in rows:
            print(json.dumps(row))
        print(f"\n{'step':<10}{'input':<22}{'s':>7}{'peak MiB':>10}{'anon MiB':>10}{'file MiB':>10}")
        for r in rows:
            print(
                f"{r['step']:<10}{r['input']:<22}{r['seconds']:>7}{r['peak_growth_mb']:>10}"
                f"{r['anon_growth_mb']:>10}{r['file_backed_growth_mb']:>10}"
            )
        print(f"(checkpoint {size_mb:.1f} MiB)")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
