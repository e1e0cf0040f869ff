"""live_pid: a helper's pid while it runs; None once it has exited, zombie or not."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from maas.pidfile import live_pid


def test_a_running_helper_is_live_and_an_exited_child_is_not_waited_on(tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pid_file.write_text(str(proc.pid))
        assert live_pid(pid_file) == proc.pid
        proc.terminate()
        deadline = time.monotonic() + 10
        # The child exits but is never reaped by Popen here: a zombie until live_pid reaps it
        # (Monitor.stop and Cluster.stop used to wait out their whole timeout on one).
        while live_pid(pid_file) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_pid(pid_file) is None and time.monotonic() < deadline
    finally:
        proc.kill()


def test_a_missing_or_garbled_pid_file_is_no_process(tmp_path: Path) -> None:
    assert live_pid(tmp_path / "absent.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid")
    assert live_pid(tmp_path / "bad.pid") is None


def test_a_stale_pid_file_never_names_the_process_that_has_its_pid_now(tmp_path: Path) -> None:
    """After a crash or a reboot the file stays and its pid may be any process's (a shell, another
    user's server): `maas serve stop` signalled that process group. The start time tells them apart."""
    import os

    from maas.pidfile import recorded_pid, write_pid

    pid_file = tmp_path / "server.pid"
    write_pid(pid_file, os.getpid())
    assert recorded_pid(pid_file) == os.getpid() and live_pid(pid_file) == os.getpid()
    pid_file.write_text(f"{os.getpid()} 12345.00")  # this pid, recorded for a process started in 1970
    assert recorded_pid(pid_file) is None and live_pid(pid_file) is None
