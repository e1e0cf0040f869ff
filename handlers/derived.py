"""Where a worker writes what it derives from an archive at load: the int4 kernel's graph and library
(int4_vnni.py), an int8 KV cache's copy of the decoder (kv_int8.py).

Beside the archive's own files when its folder is writable, so that the model's next workers (and
the next server) find them made. A model store mounted read-only (as the Kubernetes manifests mount
it) cannot take them: there they go to a directory of this archive's own under the temp dir
($TMPDIR / $TEMP; the image's TEMP is an emptyDir, so each pod derives them once, at its first
worker's load). That directory is private to this user: a kernel library built there is code, and
it is loaded from there. (Not links to the archive's files: ONNX Runtime and onnx refuse a graph
whose weights' data file is a link out of its directory.)
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


def workdir(model_dir: Path) -> Path:
    """`model_dir` where this worker may write; else a private directory of this archive's own under
    the temp dir (named by its manifest's hash); `model_dir` too where no such directory can be had
    (then writing there fails, and the caller serves the archive as built and logs why)."""
    if writable(model_dir):
        return model_dir
    try:
        manifest = model_dir / "manifest.json"
        key = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else str(model_dir.resolve()).encode())
        work = private_dir(private_dir(Path(tempfile.gettempdir()) / f"maas-{os.getuid()}")
                           / f"{model_dir.name}-{key.hexdigest()[:16]}")
    except OSError as exc:
        log.warning("%s is read-only and no private directory could be made under %s: %s", model_dir,
                    tempfile.gettempdir(), exc)
        return model_dir
    log.info("%s is read-only: what this worker derives from it goes to %s", model_dir, work)
    return work


def writable(folder: Path) -> bool:
    """Whether a file can be made in `folder` (made and removed: permissions, a read-only mount, root)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".maas-probe-"):
            return True
    except OSError:
        return False


def private_dir(path: Path) -> Path:
    """`path`, made if absent (mode 700); refused unless it is a real directory of this user's that no
    one else may write (a shared temp dir: another user could have made it first)."""
    path.mkdir(mode=0o700, exist_ok=True)
    facts = path.lstat()
    if not stat.S_ISDIR(facts.st_mode) or facts.st_uid != os.getuid() or facts.st_mode & 0o022:
        raise PermissionError(f"{path} is not a directory of this user's that only it may write")
    return path
