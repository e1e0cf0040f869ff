"""The model store as maas reads it: archives by model and version, and what they carry.

Export, deploy, load tests and exports read archives only through here (no other module opens
a .mar), so the archive layout is known in one place.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maas.core.errors import ServeError


class StoreError(ServeError):
    """An archive that is missing, ambiguous or unreadable."""


@dataclass(frozen=True)
class Archive:
    path: Path
    model: str
    version: str


def read_archive(path: Path) -> Archive | None:
    """Model name and version from a .mar's (or an unpacked archive folder's) MAR-INF/MANIFEST.json
    (None if it is not one)."""
    try:
        if path.is_dir():  # torch-model-archiver --archive-format no-archive: what a multi-GB model ships as
            manifest = json.loads((path / "MAR-INF" / "MANIFEST.json").read_text())
        else:
            with zipfile.ZipFile(path) as z:
                manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        return None
    model = manifest.get("model", {})
    return Archive(path, model.get("modelName", ""), str(model.get("modelVersion", "")))


def archive_member(archive: Archive, member: str) -> bytes:
    """One file of an archive; a StoreError naming the archive when it is not there."""
    if archive.path.is_dir():
        try:
            return (archive.path / member).read_bytes()
        except OSError:
            raise StoreError(f"{archive.path.name}: has no {member} (an archive maas did not build?)") from None
    try:
        with zipfile.ZipFile(archive.path) as z:
            return z.read(member)
    except KeyError:
        raise StoreError(f"{archive.path.name}: has no {member} (an archive maas did not build?)") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise StoreError(f"{archive.path.name}: cannot be read ({exc})") from None


def archive_manifest(archive: Archive) -> dict[str, Any]:
    """The manifest.json maas writes into every archive it builds."""
    try:
        return json.loads(archive_member(archive, "manifest.json"))
    except ValueError:
        raise StoreError(f"{archive.path.name}: manifest.json is not JSON") from None


def archive_samples(archive: Archive, manifest: dict[str, Any] | None = None) -> dict[str, np.ndarray] | None:
    """The sample inputs the archive carries (manifest key `samples`), one array per input; None without."""
    manifest = manifest if manifest is not None else archive_manifest(archive)
    if not manifest.get("samples"):
        return None
    with np.load(io.BytesIO(archive_member(archive, manifest["samples"])), allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def store_archives(model_store: Path) -> list[Archive]:
    """Every TorchServe archive in the store (maas's or not): .mar files and archive folders."""
    folders = [p for p in model_store.iterdir() if not p.name.startswith(".") and (p / "MAR-INF").is_dir()] \
        if model_store.is_dir() else []
    found = (read_archive(p) for p in sorted([*model_store.glob("*.mar"), *folders]))
    return [a for a in found if a is not None]


def is_generative(archive: Archive) -> bool:
    """A language model (manifest kind `llm`): served by the generation handler, not tensors in and out."""
    try:
        return archive_manifest(archive).get("kind") == "llm"
    except StoreError:
        return False


def maas_archives(model_store: Path) -> tuple[list[Archive], list[str]]:
    """(tensor-model archives maas built, one line per .mar skipped and why): what store-wide commands
    on tensor models work on (language models are archive folders, served by their own handler)."""
    built, skipped = [], []
    for path in sorted(model_store.glob("*.mar")):
        archive = read_archive(path)
        if archive is None:
            skipped.append(f"skipped {path.name}: not a TorchServe archive (no MAR-INF/MANIFEST.json)")
            continue
        try:
            archive_manifest(archive)
        except StoreError as exc:
            skipped.append(f"skipped {path.name}: {str(exc).split(': ', 1)[-1]}")
            continue
        built.append(archive)
    return built, skipped


def packaged_models(model_store: Path) -> list[str]:
    """Names of the models in the store that `maas package` built (each once)."""
    archives, _ = maas_archives(model_store)
    return sorted({a.model for a in archives if archive_manifest(a).get("packaged_by") == "maas package"})


def find_archive(model_store: Path, model: str, version: str | None) -> Archive:
    """The store's archive of `model` (at `version`); a clear error when there is none or several."""
    candidates = [a for a in store_archives(model_store) if a.model == model and (version is None or a.version == version)]
    if not candidates:
        what = f"{model} version {version}" if version else model
        hint = f"maas build {model}" + (f" --version {version}" if version else "")
        raise StoreError(f"no archive for {what} in {model_store}: build it with `{hint}`")
    if len(candidates) > 1:
        plain = [a for a in candidates if a.path.name in (f"{model}.mar", model)]  # a .mar, or an archive folder
        if version is None and plain:
            return plain[0]
        versions = ", ".join(sorted(a.version for a in candidates))
        raise StoreError(f"{model} has several archives ({versions}) in {model_store}: pick one with --version")
    return candidates[0]


def workflow_archive(workflow_store: Path, name: str) -> Path | None:
    """<name>.war in the workflow store, if it is there."""
    path = workflow_store / f"{name}.war"
    return path if path.is_file() else None
