"""PID 1 of the serving image: runs its command (TorchServe in the foreground) in a process group
of its own, passes SIGTERM, SIGINT and SIGHUP to that whole group, reaps every orphan, and exits
once all of them are gone, with the command's status.

Why: the kernel drops a signal sent to a PID namespace's first process unless that process
handles it, and `torchserve --foreground`'s launcher handles none. Without this, `docker stop`,
a Swarm rolling update and a Kubernetes pod's termination each waited out the whole grace period
(10 s; Kubernetes' default 30 s) and then SIGKILLed TorchServe. With it, TorchServe's Java frontend
gets SIGTERM (what `torchserve --stop` sends) and the container is gone in about a second; it
stays until the frontend has exited, so its shutdown is not cut short.

Standard library only, like the health check.
"""
import os
import signal
import subprocess
import sys

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: entrypoint.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    child = subprocess.Popen(argv, start_new_session=True)  # its own group: TorchServe's Java joins it

    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass  # the group is gone already

    for signum in FORWARDED:
        signal.signal(signum, forward)
    status = None
    while True:  # as PID 1, every orphan of the group (the frontend, its workers) is ours to reap
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break  # nothing left
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(raw)
            child.returncode = status  # so Popen never waits on it again
            stopping = True  # the launcher is gone: what is left of its group stops too
        if stopping:
            # Again at each exit: a frontend that saw its workers die of the signal starts new ones
            # as it shuts down, and those would wait for it forever.
            forward(signal.SIGTERM, None)
    if status is None:
        return 1
    return status if status >= 0 else 128 - status  # killed by signal N: 128 + N, as a shell says


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
