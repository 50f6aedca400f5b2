"""Round trip of a job through shoald vs calling the model in-process.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/roundtrip.py [--runs 5] [--iters 2000]

Starts shoald (1 worker) on a temporary socket, packages an identity model, and measures
p50/p99 per call, for arena-backed inputs of 4 KiB and 64 MiB:
  - in-process: the unpackaged model called directly in this Python process (baseline);
  - shoal, Python client (shoal.Client.infer);
  - shoal, C++ client (build/bin/bench_roundtrip);
  - the floor of this machine: one socketpair ping-pong between two processes
    (a shoal job needs two such hops: client -> shoald -> worker and back).
Each figure is the median over --runs runs; all measured in the same invocation.
"""
import argparse
import os
import socket
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


def percentiles(samples):
    s = sorted(samples)
    return s[len(s) // 2], s[len(s) * 99 // 100]


def time_calls(fn, iters):
    for _ in range(iters // 10):
        fn()
    us = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        us.append((time.perf_counter() - t0) * 1e6)
    return percentiles(us)


def pingpong(iters):
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while True:
            d = b.recv(64)
            if not d:
                os._exit(0)
            b.send(d)
    b.close()
    r = time_calls(lambda: (a.send(b"x"), a.recv(64)), iters)
    a.close()
    os.waitpid(pid, 0)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2000)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-bench-")
    model = shoal_test_models.Identity()
    archive = shoal.export(model, os.path.join(tmp, "identity.pt"))
    sock = os.path.join(tmp, "shoal.sock")
    log = open(os.path.join(tmp, "shoald.log"), "w")
    daemon = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers", "1",
                               "--model", f"identity={archive}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                c = shoal.Client(sock, arena_size=512 << 20)
                if c.models()[0]["ready"]:
                    break
            except shoal.Error:
                time.sleep(0.1)
        rows = []
        for label, nbytes in (("4 KiB", 4096), ("64 MiB", 64 << 20)):
            x = c.empty((nbytes // 4,))
            x.fill_(1.0)
            results = {"in-process": [], "shoal (Python client)": [], "shoal (C++ client)": []}
            for _ in range(args.runs):
                with torch.inference_mode():
                    results["in-process"].append(time_calls(lambda: model(x), args.iters))
                results["shoal (Python client)"].append(time_calls(lambda: c.infer("identity", x), args.iters))
                out = subprocess.run([os.path.join(BUILD, "bin", "bench_roundtrip"), sock, "identity",
                                      str(nbytes), str(args.iters)], capture_output=True, text=True, check=True)
                p50, p99 = map(float, out.stdout.split())
                results["shoal (C++ client)"].append((p50, p99))
            for name, runs in results.items():
                rows.append((label, name, statistics.median(r[0] for r in runs),
                             statistics.median(r[1] for r in runs)))
        floor = [pingpong(args.iters) for _ in range(args.runs)]
        rows.append(("1 byte", "socketpair ping-pong (machine floor, 1 hop)",
                     statistics.median(r[0] for r in floor), statistics.median(r[1] for r in floor)))
    finally:
        daemon.terminate()
        daemon.wait()
    print(f"runs={args.runs} iters={args.iters} cpus={os.cpu_count()} torch={torch.__version__}")
    print("| input | path | p50 (us) | p99 (us) |")
    print("|---|---|---|---|")
    for label, name, p50, p99 in rows:
        print(f"| {label} | {name} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
