"""Soak: many requests from concurrent clients while some of them crash workers.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/soak.py [--requests 20000] [--clients 8] [--fault-rate 0.03] [--workers 2]

Starts shoald with two models: `add` (healthy) and `crashy` (segfaults on negative input,
through ctypes, like a broken C extension). Each client sends its share of requests; a
fraction --fault-rate of them go to `crashy` with a negative input. Reports:
  answered   every request that got exactly one answer
  expected   faulty requests answered WorkerCrashed
  unexpected answers that were wrong or errors on healthy requests
  lost/hung  requests with no answer when their client finished (must be 0)
and p50/p99 latency of the healthy requests, and worker replacement times (crash ->
replacement serving, from shoald's log).
"""
import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))

import torch  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--fault-rate", type=float, default=0.03)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    print("| fault rate | answered | failed as expected | unexpected | lost | hung | healthy p50 (us) |"
          " healthy p99 (us) | restarts | restart p50 (ms) | restart max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    # The baseline (no faults) runs in the same invocation, on the same machine.
    for rate in (0.0, args.fault_rate):
        soak(args, rate)


def soak(args, fault_rate):
    tmp = tempfile.mkdtemp(prefix="shoal-soak-")
    add = shoal.export(shoal_test_models.AddConst(1.0), os.path.join(tmp, "add.pt"))
    crashy = shoal.export(shoal_test_models.Crashy(), os.path.join(tmp, "crashy.pt"))
    sock = os.path.join(tmp, "shoal.sock")
    log_path = os.path.join(tmp, "shoald.log")
    daemon = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers",
                               str(args.workers), "--model", f"add={add}", "--model", f"crashy={crashy}",
                               # crashes are the point here: the most the limit allows, counted over 1 s
                               "--crash-loop-limit", "1000", "--crash-window-s", "1", "--timeout-ms", "60000"],
                              stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    for _ in range(600):
        if daemon.poll() is not None:
            sys.exit(f"shoald exited ({daemon.returncode}) before serving: {open(log_path).read()}")
        try:
            with shoal.Client(sock) as c:
                if c.health()["ready"] and all(w["models"] for w in c.status()["workers"]):
                    break
        except shoal.Error:
            pass
        time.sleep(0.05)

    per_client = args.requests // args.clients
    stats = {"answered": 0, "expected": 0, "unexpected": 0, "lost": 0}
    latencies = []
    lock = threading.Lock()

    def run(k):
        rng = random.Random(k)
        local_lat = []
        local = {"answered": 0, "expected": 0, "unexpected": 0, "lost": 0}
        with shoal.Client(sock, arena_size=16 << 20) as c:
            for i in range(per_client):
                faulty = rng.random() < fault_rate
                x = torch.full((16,), -1.0 if faulty else float(i))
                t0 = time.perf_counter()
                try:
                    y = c.infer("crashy" if faulty else "add", x)
                    ok = not faulty and torch.equal(y, x * 2 + 1)
                    local["answered"] += 1
                    local["unexpected"] += 0 if ok else 1
                    if ok:
                        local_lat.append((time.perf_counter() - t0) * 1e6)
                except shoal.WorkerCrashed:
                    local["answered"] += 1
                    local["expected" if faulty else "unexpected"] += 1
                except shoal.Unavailable:
                    local["lost"] += 1
                    break
                except shoal.Error:
                    local["answered"] += 1
                    local["unexpected"] += 1
        with lock:
            for key in stats:
                stats[key] += local[key]
            latencies.extend(local_lat)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(1800)
    hung = sum(1 for t in threads if t.is_alive())
    wall = time.monotonic() - t0
    daemon.terminate()
    daemon.wait(60)

    # Replacement time: "died" -> that slot's next "serves N models" line.
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")  # noqa: E731
    died, restarts = {}, []
    for line in open(log_path):
        m = re.search(r"worker (\d+) \(pid \d+\) died", line)
        if m:
            died[m.group(1)] = stamp(line)
        m = re.search(r"worker (\d+) \(pid \d+\) serves", line)
        if m and m.group(1) in died:
            restarts.append((stamp(line) - died.pop(m.group(1))).total_seconds() * 1000)
    sent = per_client * args.clients
    lat = sorted(latencies)
    print(f"| {fault_rate} ({sent} requests, {wall:.1f} s) | {stats['answered']} | {stats['expected']} | {stats['unexpected']} | "
          f"{sent - stats['answered']} | {hung} | {lat[len(lat) // 2]:.0f} | {lat[len(lat) * 99 // 100]:.0f} | "
          f"{len(restarts)} | {statistics.median(restarts) if restarts else 0:.1f} | "
          f"{max(restarts) if restarts else 0:.1f} |")


if __name__ == "__main__":
    main()
