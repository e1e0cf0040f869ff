"""Where a worker writes what it derives from an archive at load: the int4 kernel's graph and library
(int4_vnni.py), an int8 KV cache's copy of the decoder (kv_int8.py).

Beside the archive's own files when its folder is writable, so that the model's next workers (and
the next server) find them made. A model store mounted read-only (as the Kubernetes manifests mount
it) cannot take them: there they go to a directory of this archive's own under the temp dir
(Python's: $TMPDIR, else $TEMP, else /tmp; the image's TEMP is an emptyDir, so each pod derives
them once, at its first worker's load). That directory is private to this user: a kernel library
built there is code, and it is loaded from there. (Not links to the archive's files: ONNX Runtime
and onnx refuse a graph whose weights' data file is a link out of its directory.)
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)


def workdir(model_dir: Path) -> Path | None:
    """`model_dir` where this worker may write; else a private directory of this archive's own under
    the temp dir; None where neither can be had (logged: nothing is derived, the archive serves as
    built). The directory is named by the archive's path and manifest: another archive at that path
    (a new build in its place) gets a new one, and the old one's copies are removed."""
    if writable(model_dir):
        return model_dir
    temp = Path(tempfile.gettempdir())
    slot = f"{model_dir.name}-{hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:8]}"
    manifest = model_dir / "manifest.json"
    content = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else b"").hexdigest()[:12]
    try:
        if not safe_parent(temp):
            raise PermissionError(f"others may write to {temp} and it is not sticky")
        try:
            base = private_dir(temp / f"maas-{os.getuid()}")
        except PermissionError:  # someone else's, or loosened: one of our own, for this worker only
            base = Path(tempfile.mkdtemp(prefix=f"maas-{os.getuid()}-", dir=temp))
        work = private_dir(base / f"{slot}-{content}")
    except OSError as exc:
        log.warning("%s is read-only and no private directory could be had under %s (%s): the archive serves "
                    "as built", model_dir, temp, exc)
        return None
    for old in base.glob(f"{slot}-*"):  # what an earlier archive at this path left: as large as its weights
        if old != work:
            shutil.rmtree(old, ignore_errors=True)
    log.info("%s is read-only: what this worker derives from it goes to %s", model_dir, work)
    return work


def writable(folder: Path) -> bool:
    """Whether a file can be made in `folder` (made and removed: permissions, a read-only mount, root)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".maas-probe-"):
            return True
    except OSError:
        return False


def safe_parent(folder: Path) -> bool:
    """Whether no other user can rename what this user makes in `folder`: sticky (as /tmp is), or
    writable by its owner only, that owner root or this user (an emptyDir of the pod's user)."""
    facts = folder.stat()
    return bool(facts.st_mode & stat.S_ISVTX) or (not facts.st_mode & 0o022 and facts.st_uid in (0, os.getuid()))


def private_dir(path: Path) -> Path:
    """`path`, made if absent (mode 700); refused unless it is a real directory of this user's that no
    one else may write (a shared temp dir: another user could have made it first)."""
    path.mkdir(mode=0o700, exist_ok=True)
    facts = path.lstat()
    if not stat.S_ISDIR(facts.st_mode) or facts.st_uid != os.getuid() or facts.st_mode & 0o077:
        raise PermissionError(f"{path} is not a directory of this user's that only it may use")
    return path


def locked(target: Path) -> IO[str]:
    """An exclusive lock on making `target` (its `.lock` beside it), held until the returned file is
    closed (`with locked(target):`): a model's workers start together, one writes, the others wait."""
    lock = open(target.with_name(target.name + ".lock"), "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock
