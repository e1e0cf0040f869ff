"""The pid of a helper process maas started (Prometheus, HAProxy), from the file it wrote."""
from __future__ import annotations

import os
from pathlib import Path

import psutil


def write_pid(pid_file: Path, pid: int) -> None:
    """`pid` and its start time: a file left by a crash or a reboot must not name whatever process
    gets that pid next (`stop` would signal it)."""
    pid_file.write_text(f"{pid} {_started(pid)}")


def _started(pid: int) -> str:
    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except psutil.Error:
        return ""


def recorded_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file`, unless a live process of that pid started at another time than the
    one recorded (None: no file, a garbled one, or a stale one)."""
    try:
        fields = pid_file.read_text().split()
        pid = int(fields[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    started = _started(pid)
    return None if len(fields) > 1 and started and started != fields[1] else pid


def live_pid(pid_file: Path) -> int | None:
    """The pid in `pid_file` while that process is alive, else None.

    A process that has exited but not been reaped (a zombie) still answers `kill(pid, 0)`:
    when it is this process's own child (the helper was started in this process, as in
    tests or a Python caller), it is reaped here; any other zombie is read from /proc.
    """
    pid = recorded_pid(pid_file)
    if pid is None:
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
