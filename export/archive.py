"""Package a verified model: manifest.json + model-config.yaml + torch-model-archiver -> .mar."""
from __future__ import annotations

import ast
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

import maas.handlers
from maas.core.clock import now_iso
from maas.core.errors import ExportError
from maas.core.spec import ModelSpec
from maas.handlers.integrity import sha256_file

log = logging.getLogger(__name__)

HANDLERS_DIR = Path(maas.handlers.__path__[0])  # handlers/ in a checkout, package data when installed
# Pickled files can run code when loaded; an archive of ours never carries one.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".joblib")


class ArchiveError(ExportError):
    """torch-model-archiver failed, or its output breaks a packaging rule."""


def archive_name(name: str, version: str | None, own_version: str | None = None) -> str:
    """The archive's file name (without .mar): <name> for the model's own version (or none given),
    <name>-<version> for a stamped one, so versions sit side by side in a model store."""
    return name if version in (None, own_version) else f"{name}-{version}"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime-gpu", "torchserve", "torch-model-archiver"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


# What write_manifest sets itself; every other key of a manifest is model-specific (`extra`).
MANIFEST_OWN_KEYS = ("name", "version", "description", "created", "model_file", "sha256", "size_bytes", "inputs",
                     "outputs", "batch_axis", "opset", "atol", "rtol", "metrics", "parity", "versions", "variant", "assets")


def write_manifest(
    build_dir: Path,
    spec: ModelSpec,
    onnx_path: Path,
    version: str,
    metrics: dict[str, Any],
    parity: dict[str, Any],
    extra: dict[str, Any],
) -> Path:
    """manifest.json: what the handler checks at load and what a release reads. `assets`: the sha256
    of every file the handler may read beside the model (tokenizer, labels, samples, a user's own
    modules), checked at load as the model is."""
    external = {e["file"] for e in extra.get("external_data", [])}  # hashed there already
    assets = build_dir / "assets"
    manifest = {
        "name": spec.name,
        "version": version,
        "description": spec.description,
        "created": now_iso(),
        "model_file": onnx_path.name,
        "sha256": sha256_file(onnx_path),
        "size_bytes": onnx_path.stat().st_size,
        **spec.io_dict(),
        "metrics": metrics,
        "parity": parity,
        "versions": _versions(),
        **extra,
        "assets": {p.name: sha256_file(p) for p in sorted(assets.glob("*")) if p.is_file() and p.name not in external}
        if assets.is_dir() else {},
    }
    path = build_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def write_model_config(build_dir: Path, spec: ModelSpec) -> Path:
    path = build_dir / "model-config.yaml"
    path.write_text(yaml.safe_dump(spec.model_config(), sort_keys=False))
    return path


def handler_support(handler: Path, handlers_dir: Path = HANDLERS_DIR) -> list[Path]:
    """The modules of `handlers_dir` that `handler` imports, directly or through one another: what
    its archive carries beside it (a handler file declares what it needs by importing it, flat, as
    TorchServe's worker will), and the C source beside a module that builds one (int4_vnni.c)."""
    found: dict[str, Path] = {}
    todo = [handler]
    while todo:
        for node in ast.walk(ast.parse(todo.pop().read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                path = handlers_dir / f"{name.split('.')[0]}.py"
                if path.is_file() and path.name not in found and path.resolve() != handler.resolve():
                    found[path.name] = path
                    todo.append(path)
                    if path.with_suffix(".c").is_file():
                        found[path.with_suffix(".c").name] = path.with_suffix(".c")
    return sorted(found.values())


def package(build_dir: Path, spec: ModelSpec, model_store: Path, version: str, archive_name: str,
            handlers_dir: Path = HANDLERS_DIR, handler_path: Path | None = None) -> Path:
    """Run torch-model-archiver; the .mar carries handler, support modules, model, manifest, config.

    The archive registers as `spec.name` (its MANIFEST's modelName) whatever its file is
    called, so versions sit side by side as model_store/<archive_name>.mar. `handler_path` is a
    user's own handler file (default: handlers_dir/spec.handler).
    """
    model_store.mkdir(parents=True, exist_ok=True)
    handler = handler_path or handlers_dir / spec.handler
    extra_files = [*handler_support(handler, handlers_dir), build_dir / "manifest.json"]
    extra_files += sorted(p for p in (build_dir / "assets").glob("*") if p.is_file()) if (build_dir / "assets").is_dir() else []
    cmd = [
        sys.executable, "-m", "model_archiver.model_packaging",
        "--model-name", spec.name,
        "--version", version,
        "--serialized-file", str(build_dir / "model.onnx"),
        "--handler", str(handler),
        "--extra-files", ",".join(str(p) for p in extra_files),
        "--config-file", str(build_dir / "model-config.yaml"),
        "--export-path", str(build_dir),
        "--force",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ArchiveError(f"torch-model-archiver failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
    built, mar = build_dir / f"{spec.name}.mar", model_store / f"{archive_name}.mar"
    check_no_pickle(built)  # before it is in the store: a refused archive never replaces the one there
    partial = model_store / f".{archive_name}.mar.partial"
    try:  # copied beside, then renamed: the store never holds half an archive (the build dir may be on another disk)
        shutil.copyfile(built, partial)
        os.replace(partial, mar)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ArchiveError(f"{mar}: could not be written ({exc.strerror or exc})") from None
    log.info("%s: packaged %s (%.1f KiB)", spec.name, mar, mar.stat().st_size / 1024)
    return mar


def check_no_pickle(mar: Path) -> None:
    """No pickle in an archive, by name or by content (a pickle's protocol header, or a torch.save zip).

    The model's external weights (raw tensor bytes listed with their sha256 in manifest.json, the
    handler checks them at load) are exempt: their names are the exporter's and their bytes arbitrary.
    """
    with zipfile.ZipFile(mar) as z:
        names = z.namelist()
        manifest = json.loads(z.read("manifest.json")) if "manifest.json" in names else {}
        weights = {e["file"] for e in manifest.get("external_data", [])}
        pickled = [n for n in names if n not in weights and (n.lower().endswith(PICKLE_SUFFIXES) or _pickled(z.read(n)))]
    if pickled:
        raise ArchiveError(f"{mar.name} carries pickled files {pickled}; only .onnx weights are allowed")


def _pickled(data: bytes) -> bool:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    return data[:4] == b"PK\x03\x04" and b"data.pkl" in data[:4096]  # torch.save's zip format


def archive_model(build_dir: Path, spec: ModelSpec, path: Path, model_store: Path, archive_name: str, *,
                  parity: dict[str, Any], metrics: dict[str, Any], extra_manifest: dict[str, Any],
                  assets: list[Path], external: list[str]) -> Path:
    """The last stretch of the road, for packaged and zoo models alike: the files the handler reads
    (and external weights) into the archive, manifest.json with the sha256s, model-config.yaml,
    torch-model-archiver -> model_store/<archive_name>.mar."""
    (build_dir / "assets").mkdir(exist_ok=True)
    for asset in assets:
        shutil.copy(asset, build_dir / "assets" / Path(asset).name)
    for name in external:
        shutil.copy(build_dir / name, build_dir / "assets" / name)
    extra = {**extra_manifest,
             "external_data": [{"file": n, "sha256": sha256_file(build_dir / n)} for n in external]}
    write_manifest(build_dir, spec, path, spec.version, metrics, parity, extra)
    write_model_config(build_dir, spec)
    handler = Path(spec.handler_file) if spec.handler_file else None
    return package(build_dir, spec, model_store, spec.version, archive_name, handler_path=handler)
