"""System calls a job costs shoald and its worker (strace -c on both), one client, one job
at a time, for a model that returns its input (no output block: nothing to release) and
one that returns a new tensor (an output block a job, released by the client when it
drops the result: the release travels with its next request). Every job has shoald's
default deadline (60 s), as a client that gives none gets.

One command (after scripts/build.sh; needs strace):
    /usr/bin/python3 bench/syscalls.py [--jobs 2000]
SHOAL_BUILD_DIR picks the build (compare two builds by running it once for each).
Counts are per job, over --jobs jobs after 300 to warm up; timings under strace mean
nothing and are not printed.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build")))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
sys.path.insert(0, HERE)

import torch  # noqa: E402
from torch import nn  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402
from gpu import Daemon  # noqa: E402  (bench/gpu.py's shoald, started and stopped)


class AddOne(nn.Module):
    def forward(self, x):
        return x + 1


def counts(path):
    """{syscall: calls} from an strace -c summary."""
    calls = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[3].isdigit() and fields[-1] not in ("syscall", "total"):
                calls[fields[-1]] = int(fields[3])
    return calls


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Daemon(1, tmp, "cpu", timeout_ms=60000)  # shoald's default deadline: every job has one
        try:
            with shoal.Client(d.socket) as c:
                c.load("identity", shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt")))
                c.load("add_one", shoal.export(AddOne(), os.path.join(tmp, "add_one.pt")))
                worker = c.status()["workers"][0]["pid"]
                x = c.empty((1024,)).fill_(1)
                for model in ("identity", "add_one"):
                    for _ in range(300):
                        c.infer(model, x)
                    tracers = {who: subprocess.Popen(["strace", "-c", "-q", "-p", str(pid), "-o",
                                                      os.path.join(tmp, f"{who}.txt")])
                               for who, pid in (("shoald", d.proc.pid), ("worker", worker))}
                    time.sleep(1.0)  # attached
                    for _ in range(args.jobs):
                        c.infer(model, x)
                    time.sleep(0.2)  # the last release's notice, if any
                    for t in tracers.values():
                        t.send_signal(signal.SIGINT)
                        t.wait()
                    for who in tracers:
                        calls = counts(os.path.join(tmp, f"{who}.txt"))
                        rows.append((model, who, calls))
        finally:
            d.stop()
    print(f"build {BUILD}, {args.jobs} jobs; system calls a job")
    print("\n| model | process | all | sendmsg | recvmsg | epoll_wait | epoll_ctl | timerfd_settime |\n|---|---|---|---|---|---|---|---|")
    for model, who, calls in rows:
        per = {k: v / args.jobs for k, v in calls.items()}
        print(f"| {model} | {who} | {sum(per.values()):.2f} | " +
              " | ".join(f"{per.get(k, 0):.2f}" for k in ("sendmsg", "recvmsg", "epoll_wait", "epoll_ctl", "timerfd_settime")) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
