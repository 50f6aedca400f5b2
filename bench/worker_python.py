"""How fast the model's own Python runs inside a worker, against the benchmark's process.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/worker_python.py [--jobs 300] [--runs 3]

A model whose forward times two things inside itself, with time.perf_counter: a pure-Python
loop (20 000 additions of products) and 200 small torch additions; it returns both times.
It runs in-process (the `python3` that runs this file) and served by one worker of
shoal-worker-py (the python3 executable as the worker) and of shoal-worker (the worker
on the shared libpython), one client, one job at a time; medians of --jobs jobs per run,
the three alternating, then the median over --runs. The serving path is not in these
times: only what the model's code costs where it runs.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build")))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, HERE)
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402
from torch import nn  # noqa: E402

import shoal  # noqa: E402
from gpu import Daemon  # noqa: E402  (bench/gpu.py's shoald, started and stopped)

torch.set_num_threads(1)


class TimedLoops(nn.Module):
    def forward(self, x):
        t0 = time.perf_counter()
        s = 0
        for i in range(20000):
            s += i * i
        t1 = time.perf_counter()
        y = x
        for _ in range(200):
            y = y + 1.0
        t2 = time.perf_counter()
        return torch.tensor([t1 - t0, t2 - t1])


def medians(samples):
    return tuple(statistics.median(s[i] for s in samples) * 1e6 for i in (0, 1))


def in_process(net, x, jobs):
    with torch.no_grad():
        for _ in range(20):
            net(x)
        return medians([net(x).tolist() for _ in range(jobs)])


def served(archive, x, jobs, worker, tmp):
    d = Daemon(1, tmp, "cpu", extra=["--worker-binary", os.path.join(BUILD, "bin", worker)], tag=worker)
    try:
        with shoal.Client(d.socket) as c:
            c.load("m", archive)
            for _ in range(20):
                c.infer("m", x)
            return medians([c.infer("m", x).tolist() for _ in range(jobs)])
    finally:
        d.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-worker-python-")
    net = TimedLoops().eval()
    archive = shoal.export(net, os.path.join(tmp, "loops.pt"))
    x = torch.randn(1, 32)
    rows = {}
    for run in range(args.runs):
        for where in ("in-process", "shoal-worker-py", "shoal-worker"):
            r = in_process(net, x, args.jobs) if where == "in-process" else served(archive, x, args.jobs, where, tmp)
            rows.setdefault(where, []).append(r)
            print(f"run {run} {where}: Python loop {r[0]:.0f} us, torch ops {r[1]:.0f} us", file=sys.stderr, flush=True)
    base = statistics.median(r[0] for r in rows["in-process"])
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, Python {sys.version.split()[0]}, "
          f"{args.runs} runs x {args.jobs} jobs")
    print("| where | Python loop (us) | x in-process | torch ops (us) |")
    print("|---|---|---|---|")
    for where, rs in rows.items():
        loop = statistics.median(r[0] for r in rs)
        ops = statistics.median(r[1] for r in rs)
        print(f"| {where} | {loop:.0f} | {loop / base:.2f} | {ops:.0f} |")


if __name__ == "__main__":
    main()
