"""PID 1 of the serving image: runs its command (TorchServe in the foreground) in a process group
of its own, passes SIGTERM, SIGINT and SIGHUP to what the command started (TorchServe's Java
frontend), reaps every orphan, stops what is left of the group once the command has exited, and
exits when all of it is gone, with the command's status.

Why: the kernel drops a signal sent to a PID namespace's first process unless that process
handles it, and `torchserve --foreground`'s launcher handles none. Without this, `docker stop`,
a Swarm rolling update and a Kubernetes pod's termination each waited out the whole grace period
(10 s; Kubernetes' default 30 s) and then SIGKILLed TorchServe. With it, TorchServe's Java frontend
gets SIGTERM (what `torchserve --stop` sends) and the container is gone in a few seconds; it
stays until the frontend has exited, so its shutdown is not cut short.

Standard library only, like the health check.
"""
import os
import signal
import stat
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def private_tmpdir() -> None:
    """TMPDIR: a directory of this user's only, made in TEMP now, before anything else runs here.

    A language model's workers write what they derive from a read-only archive (the int4 kernel's
    graph) under the temp dir, and load code from there, so they refuse one that other users may
    write into without the sticky bit, which is what a Kubernetes emptyDir is (0777). Made at the
    container's start, in a scratch no one else has touched yet, it is safe for them."""
    temp = os.environ.get("TEMP")
    if not temp or os.environ.get("TMPDIR"):
        return
    path = os.path.join(temp, ".maas-tmp")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        facts = os.lstat(path)
    except OSError:
        return  # the workers say why they derive nothing
    if stat.S_ISDIR(facts.st_mode) and facts.st_uid == os.getuid() and not facts.st_mode & 0o077:
        os.environ["TMPDIR"] = path


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: entrypoint.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    private_tmpdir()
    child = subprocess.Popen(argv, start_new_session=True)  # its own group: TorchServe's Java joins it

    def sweep(signum: int = signal.SIGTERM) -> None:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass  # the group is gone already

    def forward(signum: int, _frame: object) -> None:
        # To what the launcher started (TorchServe's Java frontend), as `torchserve --stop` does: it
        # closes its ports, then stops its workers and exits, and the launcher with it. Its workers
        # signalled at once would fail requests still in flight (a 500 each) and be restarted.
        if child.returncode is not None:
            sweep(signum)
            return
        for pid in children_of(child.pid) or [child.pid]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = None
    while True:  # as PID 1, every orphan of the group (the frontend's workers) is ours to reap
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break  # nothing left
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(raw)
            child.returncode = status  # so Popen never waits on it again
        if status is not None:
            sweep()  # the launcher is gone: what is left of its group stops too (again at each exit)
    if status is None:
        return 1
    return status if status >= 0 else 128 - status  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
