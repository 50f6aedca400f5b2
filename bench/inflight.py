"""Throughput of one client connection with many jobs in flight vs one at a time.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/inflight.py [--runs 5] [--jobs 4000] [--inflight 32] [--workers 1,2]

Starts shoald (identity model, --workers N) on a temporary socket and sends --jobs jobs on
ONE connection with a 4 KiB arena-backed input, either one at a time (infer / Infer in a
loop) or keeping --inflight of them in flight (Python: Client.submit, waiting for the
oldest future whenever that many are out; C++: InferAsync, the same way, build/bin/
bench_roundtrip). Reports jobs/s, the median over --runs runs, the contenders alternating
within each run.
"""
import argparse
import collections
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))

import torch  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402

NBYTES = 4096


def python_jobs_per_s(c, x, jobs, inflight):
    for _ in range(jobs // 10):  # warm-up
        c.infer("identity", x)
    t0 = time.perf_counter()
    if inflight == 1:
        for _ in range(jobs):
            c.infer("identity", x)
    else:
        out = collections.deque()
        for _ in range(jobs):
            if len(out) == inflight:
                out.popleft().result()
            out.append(c.submit("identity", x))
        for f in out:
            f.result()
    return jobs / (time.perf_counter() - t0)


def cpp_jobs_per_s(sock, jobs, inflight):
    out = subprocess.run([os.path.join(BUILD, "bin", "bench_roundtrip"), sock, "identity", str(NBYTES), str(jobs),
                          str(inflight)], capture_output=True, text=True, check=True)
    return float(out.stdout)


def start(tmp, archive, workers):
    sock = os.path.join(tmp, f"shoal-{workers}.sock")
    log = open(os.path.join(tmp, f"shoald-{workers}.log"), "w")
    daemon = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers", str(workers),
                               "--model", f"identity={archive}"], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            with shoal.Client(sock) as c:
                if c.models()[0]["ready"] and all(w["pid"] > 0 for w in c.status()["workers"]):
                    return daemon, sock
        except shoal.Error:
            pass
        time.sleep(0.1)
    daemon.kill()
    raise RuntimeError("shoald did not come up")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=4000)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="shoal-bench-")
    archive = shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt"))
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        daemon, sock = start(tmp, archive, workers)
        try:
            c = shoal.Client(sock)
            x = c.empty((NBYTES // 4,))
            x.fill_(1.0)
            results = collections.defaultdict(list)
            for _ in range(args.runs):  # the contenders alternate within each run
                for n in (1, args.inflight):
                    results[("Python", n)].append(python_jobs_per_s(c, x, args.jobs, n))
                    results[("C++", n)].append(cpp_jobs_per_s(sock, args.jobs, n))
            c.close()
        finally:
            daemon.terminate()
            daemon.wait()
        for client in ("Python", "C++"):
            one = statistics.median(results[(client, 1)])
            many = statistics.median(results[(client, args.inflight)])
            rows.append((workers, client, one, many, many / one))
    print(f"runs={args.runs} jobs={args.jobs} inflight={args.inflight} cpus={os.cpu_count()} "
          f"torch={torch.__version__}")
    print(f"| workers | client | 1 at a time (jobs/s) | {args.inflight} in flight (jobs/s) | ratio |")
    print("|---|---|---|---|---|")
    for workers, client, one, many, ratio in rows:
        print(f"| {workers} | {client} | {one:.0f} | {many:.0f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
