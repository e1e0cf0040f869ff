"""Export verified archives as a Triton Inference Server model repository (ONNX Runtime backend).

    model_repository/<model>/config.pbtxt     from the archive's manifest (I/O spec) and model-config.yaml
    model_repository/<model>/1/model.onnx     the archive's model, sha256-checked against its manifest

The same ONNX file TorchServe serves, so it can move to an engine with a future. What the
maas handlers do around the graph (JSON parsing, image conversion, tokenization, top-k)
is the Triton user's part: see the README.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import yaml

from maas.deploy import find_archive

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                "bool": "TYPE_BOOL"}


class TritonExportError(Exception):
    """The archive cannot be exported as it is."""


def _tensor(t: dict[str, Any]) -> str:
    # Triton's dims leave out the batch axis (max_batch_size > 0); other dynamic axes are -1.
    dims = [d if isinstance(d, int) else -1 for d in t["shape"][1:]]
    return (f'  {{\n    name: "{t["name"]}"\n    data_type: {TRITON_TYPES[t["dtype"]]}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def config_pbtxt(manifest: dict[str, Any], model_config: dict[str, Any], gpu: bool = False) -> str:
    """A Triton model configuration (protobuf text) equivalent to the TorchServe settings."""
    for t in manifest["inputs"] + manifest["outputs"]:
        if t["shape"][0] != "batch":
            raise TritonExportError(f"{manifest['name']}: tensor {t['name']} has no leading batch axis")
    handler = model_config.get("handler") or {}
    threads = int(handler.get("intra_op_threads") or 0)
    lines = [
        f'name: "{manifest["name"]}"',
        'backend: "onnxruntime"',
        # The largest batch one request may carry (the handler's item limit) or the batcher forms.
        f"max_batch_size: {max(int(model_config.get('batchSize', 8)), int(handler.get('max_items_per_request') or 0))}",
        "input [\n" + ",\n".join(_tensor(t) for t in manifest["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor(t) for t in manifest["outputs"]) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(model_config.get('maxBatchDelay', 5)) * 1000}\n}}",
        f"instance_group [\n  {{\n    count: {int(model_config.get('minWorkers', 1))}\n"
        f"    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
        "version_policy: { specific: { versions: [ 1 ] } }",
    ]
    if threads:
        lines.append('parameters {\n  key: "intra_op_thread_count"\n  value: { string_value: "%d" }\n}' % threads)
    return "\n".join(lines) + "\n"


def export(model_store: Path, model: str, out_repo: Path, version: str | None = None, gpu: bool = False) -> Path:
    """Write out_repo/<model>/ from the model store's archive; returns the model's folder."""
    archive = find_archive(model_store, model, version)
    with zipfile.ZipFile(archive.path) as z:
        manifest = json.loads(z.read("manifest.json"))
        model_config = yaml.safe_load(z.read("model-config.yaml")) if "model-config.yaml" in z.namelist() else {}
        onnx_bytes = z.read(manifest["model_file"])
    if hashlib.sha256(onnx_bytes).hexdigest() != manifest["sha256"]:
        raise TritonExportError(f"{archive.path.name}: model sha256 does not match its manifest; refusing to export")
    folder = out_repo / model
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "1" / "model.onnx").write_bytes(onnx_bytes)
    (folder / "config.pbtxt").write_text(config_pbtxt(manifest, model_config, gpu))
    return folder
