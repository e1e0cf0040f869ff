"""The pid of a helper process maas started (Prometheus, HAProxy), from the file it wrote."""
from __future__ import annotations

import os
from pathlib import Path


def live_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` while that process is alive, else None.

    A process that has exited but not been reaped (a zombie) still answers `kill(pid, 0)`:
    when it is this process's own child (the helper was started in this process, as in
    tests or a Python caller), it is reaped here; any other zombie is read from /proc.
    """
    try:
        pid = int(pid_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return None  # our own child, exited: reaped now
    except ChildProcessError:
        pass  # not our child (started by another maas command)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return None
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    except (OSError, IndexError):
        pass
    return pid
