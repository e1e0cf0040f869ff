"""Export verified archives as a Triton Inference Server model repository (ONNX Runtime backend;
Triton's OpenVINO backend for an archive whose manifest names the openvino engine, which reads the
same ONNX file).

    model_repository/<model>/config.pbtxt     from the archive's manifest (I/O spec) and model-config.yaml
    model_repository/<model>/1/model.onnx     the archive's model, sha256-checked against its manifest

The same ONNX file TorchServe serves, so it can move to an engine with a future. What the
maas handlers do around the graph (JSON parsing, image conversion, tokenization, top-k)
is the Triton user's part: see the README.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import yaml

from maas.client import ServeError
from maas.core.errors import ExportError
from maas.core.spec import ServingSpec
from maas.core.store import archive_manifest, archive_member, find_archive
from maas.handlers.dtypes import triton_name


class TritonExportError(ExportError):
    """The archive cannot be exported as it is."""

    show_type = False


def _tensor(t: dict[str, Any], batched: bool) -> str:
    # Triton's dims leave out the batch axis (max_batch_size > 0); other dynamic axes are -1.
    dims = [d if isinstance(d, int) else -1 for d in (t["shape"][1:] if batched else t["shape"])]
    return (f'  {{\n    name: "{t["name"]}"\n    data_type: {triton_name(t["dtype"])}\n'
            f'    dims: [ {", ".join(str(d) for d in dims)} ]\n  }}')


def config_pbtxt(manifest: dict[str, Any], model_config: dict[str, Any], gpu: bool = False) -> str:
    """A Triton model configuration (protobuf text) equivalent to the TorchServe settings."""
    batch = manifest.get("batch_axis", "batch")  # archives from before the manifest named it: "batch"
    batched = batch is not None
    for t in manifest["inputs"] + manifest["outputs"]:
        if batched and t["shape"][0] != batch:
            raise TritonExportError(f"{manifest['name']}: tensor {t['name']} has no leading batch axis")
    serving = ServingSpec.from_model_config(model_config)
    threads = serving.intra_op_threads
    # The largest batch one request may carry (the handler's item limit) or the batcher forms; 0: unbatched.
    max_batch = max(serving.batch_size, serving.max_items_per_request)
    openvino = (manifest.get("engine") or {}).get("name") == "openvino"
    lines = [
        f'name: "{manifest["name"]}"',
        'backend: "openvino"\ndefault_model_filename: "model.onnx"' if openvino else 'backend: "onnxruntime"',
        f"max_batch_size: {max_batch if batched else 0}",
        "input [\n" + ",\n".join(_tensor(t, batched) for t in manifest["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor(t, batched) for t in manifest["outputs"]) + "\n]",
    ]
    if batched:
        lines.append(f"dynamic_batching {{\n  max_queue_delay_microseconds: {serving.max_batch_delay_ms * 1000}\n}}")
    lines += [
        f"instance_group [\n  {{\n    count: {serving.min_workers}\n"
        f"    kind: {'KIND_GPU' if gpu else 'KIND_CPU'}\n  }}\n]",
        "version_policy: { specific: { versions: [ 1 ] } }",
    ]
    if openvino:  # Triton's OpenVINO backend passes these to the CPU plugin, as the maas handler sets them
        settings = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1", **({"INFERENCE_NUM_THREADS": str(threads)} if threads else {})}
        lines += ['parameters {\n  key: "%s"\n  value: { string_value: "%s" }\n}' % kv for kv in settings.items()]
    elif threads:
        lines.append('parameters {\n  key: "intra_op_thread_count"\n  value: { string_value: "%d" }\n}' % threads)
    return "\n".join(lines) + "\n"


def export(model_store: Path, model: str, out_repo: Path, version: str | None = None, gpu: bool = False) -> Path:
    """Write out_repo/<model>/ from the model store's archive; returns the model's folder."""
    archive = find_archive(model_store, model, version)
    try:
        manifest = archive_manifest(archive)
    except ServeError as exc:
        raise TritonExportError(str(exc)) from None
    config_text = archive_member(archive, "model-config.yaml") if _has(archive.path, "model-config.yaml") else b"{}"
    model_config = yaml.safe_load(config_text) or {}
    folder = out_repo / model
    (folder / "1").mkdir(parents=True, exist_ok=True)
    # The model file and its external weights (models over 2 GB), each checked against the manifest.
    for member, expected in [(manifest["model_file"], manifest["sha256"]),
                             *((e["file"], e["sha256"]) for e in manifest.get("external_data", []))]:
        data = archive_member(archive, member)
        if hashlib.sha256(data).hexdigest() != expected:
            raise TritonExportError(f"{archive.path.name}: {member} sha256 does not match its manifest; refusing to export")
        (folder / "1" / ("model.onnx" if member == manifest["model_file"] else member)).write_bytes(data)
    (folder / "config.pbtxt").write_text(config_pbtxt(manifest, model_config, gpu))
    return folder


def _has(path: Path, member: str) -> bool:
    with zipfile.ZipFile(path) as z:
        return member in z.namelist()
