"""Throughput, latency and memory of several interpreters per worker, side by side with
the alternatives, for a Python-overhead-bound model and for ResNet-18.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/interpreters.py [--ks 1,2,4] [--seconds 4] [--runs 3]

For each K, in one run and alternating:
  (a) gil      one in-process interpreter shared by K threads (the GIL case)
  (b) interp   shoald --workers 1 --interpreters K
  (c) workers  shoald --workers K --interpreters 1
      (--no-send-ahead: also "workers-no-ahead", the same with shoald --send-ahead-ms 0)
  --busy-sibling: also "gil-busy", (a) with K=1 while another process spins on a CPU
  --shared-libpython: also "workers-shared", (c) on shoal-worker (the shared libpython)
Each configuration is driven to saturation by 2K client processes (Python clients, one
connection each) for --seconds after a warm-up; throughput is jobs/s, p50/p99 are the
clients' round trips. Every process uses one intra-op thread (torch.set_num_threads(1),
OMP_NUM_THREADS=1), so K is the parallelism. Memory is the total Pss of the service
(shoald + zygote + workers, /proc/PID/smaps_rollup) after the run. Medians over --runs.
"""
import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build")))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, HERE)
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

import shoal  # noqa: E402
import bench_models  # noqa: E402
from bench_models import pss_kb  # noqa: E402

torch.set_num_threads(1)


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def client_loop(socket, model, shape, seconds, out):
    x = torch.randn(*shape)
    lat = []
    with shoal.Client(socket) as c:
        xa = c.empty(shape)
        xa.copy_(x)
        for _ in range(3):
            c.infer(model, xa)  # warm-up
        out.put("ready")
        start = out.get_start()
        while time.perf_counter() < start + seconds:
            t0 = time.perf_counter()
            c.infer(model, xa)
            lat.append(time.perf_counter() - t0)
    out.put(lat)


class Pipe:
    """A child's channel: results up, the common start time down."""

    def __init__(self):
        self.up = mp.get_context("fork").Queue()
        self.down = mp.get_context("fork").Queue()

    def put(self, v):
        self.up.put(v)

    def get_start(self):
        return self.down.get()


def drive(socket, model, shape, clients, seconds):
    pipes = [Pipe() for _ in range(clients)]
    procs = [mp.get_context("fork").Process(target=client_loop, args=(socket, model, shape, seconds, p))
             for p in pipes]
    for p in procs:
        p.start()
    for p in pipes:
        assert p.up.get(timeout=300) == "ready"
    start = time.perf_counter() + 0.2
    for p in pipes:
        p.down.put(start)
    lats = []
    for p in pipes:
        lats += p.up.get(timeout=seconds + 300)
    for p in procs:
        p.join()
    return len(lats) / seconds, lats


def run_gil(net, shape, threads, seconds):
    x = torch.randn(*shape)
    lats, lock = [], threading.Lock()
    with torch.no_grad():
        net(x)
    start = time.perf_counter() + 0.2

    def loop():
        mine = []
        with torch.no_grad():
            while time.perf_counter() < start:
                pass
            while time.perf_counter() < start + seconds:
                t0 = time.perf_counter()
                net(x)
                mine.append(time.perf_counter() - t0)
        with lock:
            lats.extend(mine)
    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return len(lats) / seconds, lats, pss_kb(os.getpid())


def run_shoald(archive, shape, workers, k, seconds, tmp, extra=()):
    sock = os.path.join(tmp, f"s-{workers}-{k}.sock")
    log = open(os.path.join(tmp, f"shoald-{workers}-{k}.log"), "w")
    proc = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers", str(workers),
                             "--interpreters", str(k), "--interpreter-cache", os.path.join(tmp, "cache"), *extra],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while not os.path.exists(sock):
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(open(log.name).read())
            time.sleep(0.05)
        with shoal.Client(sock) as c:
            c.load("m", archive)
        rate, lats = drive(sock, "m", shape, 2 * workers * k, seconds)
        with shoal.Client(sock) as c:
            st = c.status()
        pids = [proc.pid, st["zygote"]] + [w["pid"] for w in st["workers"]]
        return rate, lats, sum(pss_kb(p) for p in pids if p and p > 0)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="1,2,4")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--models", default="python_bound,resnet18")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--no-send-ahead", action="store_true",
                    help="also run (c) with shoald --send-ahead-ms 0 (jobs wait in shoald until a slot is free)")
    ap.add_argument("--shared-libpython", action="store_true",
                    help="also run (c) with shoald --worker-binary shoal-worker (workers-shared: the worker "
                         "on the shared libpython; with one interpreter shoald runs shoal-worker-py, the python3 executable)")
    ap.add_argument("--busy-sibling", action="store_true",
                    help="also run (a) while one more process spins on the CPU (gil-busy): on a 2-core VM, "
                         "what the in-process rate is when the other core is not idle, as shoald's is not")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    tmp = tempfile.mkdtemp(prefix="shoal-interp-bench-")
    torch.manual_seed(0)
    nets = {}
    if "python_bound" in args.models:
        nets["python_bound"] = (bench_models.PythonBound().eval(), (1, 32))
    if "resnet18" in args.models:
        import torchvision
        nets["resnet18"] = (torchvision.models.resnet18().eval(), (1, 3, 224, 224))
    rows = []
    for name, (net, shape) in nets.items():
        archive = shoal.export(net, os.path.join(tmp, f"{name}.pt"))
        results = {}
        for run in range(args.runs):
            for k in ks:
                modes = (("gil", "interp", "workers") + (("workers-no-ahead",) if args.no_send_ahead else ())
                         + (("workers-shared",) if args.shared_libpython else ())
                         + (("gil-busy",) if args.busy_sibling and k == 1 else ()))
                for mode in modes:
                    if mode == "gil":
                        r = run_gil(net, shape, k, args.seconds)
                    elif mode == "gil-busy":
                        spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                        try:
                            time.sleep(0.3)
                            r = run_gil(net, shape, k, args.seconds)
                        finally:
                            spin.kill()
                            spin.wait()
                    elif mode == "interp":
                        try:
                            r = run_shoald(archive, shape, 1, k, args.seconds, tmp)
                        except RuntimeError as e:  # --interpreters K refused by this torch
                            print(f"{mode} K={k} refused: {str(e)[-600:]}", file=sys.stderr)
                            continue
                    elif mode == "workers":
                        r = run_shoald(archive, shape, k, 1, args.seconds, tmp)
                    elif mode == "workers-shared":
                        r = run_shoald(archive, shape, k, 1, args.seconds, tmp,
                                       ["--worker-binary", os.path.join(BUILD, "bin", "shoal-worker")])
                    else:
                        r = run_shoald(archive, shape, k, 1, args.seconds, tmp, ["--send-ahead-ms", "0"])
                    results.setdefault((mode, k), []).append(r)
                    print(f"{name} run {run} {mode} K={k}: {r[0]:.1f}/s, p50 {percentile(r[1], .5) * 1e3:.2f} ms, "
                          f"Pss {r[2] / 1024:.0f} MB", file=sys.stderr, flush=True)
        base = {m: statistics.median(x[0] for x in results[(m, 1)]) for m in ("gil", "gil-busy", "interp", "workers", "workers-no-ahead", "workers-shared")
                if (m, 1) in results}
        for (mode, k), rs in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rate = statistics.median(x[0] for x in rs)
            rows.append({
                "model": name, "mode": mode, "k": k, "jobs_per_s": rate,
                "vs_own_k1": rate / base[mode] if mode in base else float("nan"),
                "vs_gil_k1": rate / base["gil"],
                "p50_ms": statistics.median(percentile(x[1], .5) for x in rs) * 1e3,
                "p99_ms": statistics.median(percentile(x[1], .99) for x in rs) * 1e3,
                "pss_mb": statistics.median(x[2] for x in rs) / 1024,
            })
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"cores: {os.cpu_count()}, torch {torch.__version__}, {args.runs} runs x {args.seconds} s, "
          "2K client processes for shoald")
    print("| model | K | mode | jobs/s | x own K=1 | x gil K=1 | p50 ms | p99 ms | Pss MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['k']} | {r['mode']} | {r['jobs_per_s']:.1f} | {r['vs_own_k1']:.2f} | "
              f"{r['vs_gil_k1']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['pss_mb']:.0f} |")


if __name__ == "__main__":
    main()
