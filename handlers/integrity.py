"""The sha256 of a model file: what maas records when it archives a model and what the handler
checks before it loads one (shipped in every archive; imports nothing of its siblings, so build
time reads it as maas.handlers.integrity)."""
from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
