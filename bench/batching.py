"""Dynamic batching: throughput and latency of N concurrent clients, each sending batch-1
jobs back to back, with batching off and on (docs/architecture.md, "Dynamic batching").

One command (after scripts/build.sh):
    /usr/bin/python3 bench/batching.py [--model resnet50|small] [--clients 1,4,16,32]
        [--seconds 10] [--workers 1] [--max-batch 32] [--max-delay-us 2000] [--device cpu|cuda]
        [--max-delays 500,1000,2000] [--only-on]

A real shoald with `--workers` workers serves one model, loaded twice: plain, and with
max_batch / max_delay_us. For each client count, the clients (one connection each, one
process each) run the plain model, then the batching one, for `--seconds` each. Reported:
jobs per second, p50 and p99 latency (ms), the mean batch size (status' batched_jobs /
batches), and the mean time a job queued in shoald (the hold included) and ran on a worker
(dispatch to answer), from shoald's metrics histograms (`--metrics-address`). `--max-delays` loads one batching model per max_delay_us (named "on-US", rows one
after the other for each client count; the p99 target of each is printed); `--only-on` skips
the plain model's rows (half the time). ResNet-50 has torchvision's architecture with random
weights; "small" is a three-layer CNN on 3x64x64 inputs for slow CPUs.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, HERE)


def small_cnn():
    import torch
    from torch import nn
    return nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval(), torch.randn(1, 3, 64, 64)


def resnet50():
    import torch
    import torchvision
    return torchvision.models.resnet50().eval(), torch.randn(1, 3, 224, 224)


def run_clients(socket, model, x, n, seconds, device, timed=False):
    """(jobs/s, p50 ms, p99 ms, [(rows, model ms) a job] when ``timed``) of n clients, each
    in its own process (bench/gpu.py)."""
    import gpu
    rate, got = gpu.drive_processes(socket, model, x, n, seconds, device, timed)
    lat = [e[0] for e in got] if timed else got
    return rate, gpu.percentile(lat, 0.5), gpu.percentile(lat, 0.99), [e[1:] for e in got] if timed else None


def in_process_ms(model, x, rows, dev, runs=5, warm=2):
    """The median ms of one run of ``model`` (on ``dev``) on a batch of ``rows`` copies of
    ``x`` in this process: ``runs`` runs after ``warm`` of warm-up, synchronized on a GPU."""
    import torch
    xb = x.to(dev).repeat(rows, *([1] * (x.dim() - 1)))
    times = []
    with torch.no_grad():
        for i in range(warm + runs):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(xb)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= warm:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


_SAMPLE = re.compile(r'^(shoal_(?:queue|compute)_duration_seconds_(?:sum|count))\{(.*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')  # name="value", value with \\ \" \n escapes
_ESCAPE = re.compile(r'\\(.)')


def scrape(path):
    """{(family, model): value} of the _sum and _count samples of shoald's queue and compute
    histograms, read from its metrics endpoint (a Unix socket) by a plain HTTP/1.0 GET."""
    import socket as so
    with so.socket(so.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: shoald\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    out = {}
    for line in data.decode().splitlines():
        m = _SAMPLE.match(line)
        if m:
            labels = {k: _ESCAPE.sub(lambda e: "\n" if e.group(1) == "n" else e.group(1), v)
                      for k, v in _LABEL.findall(m.group(2))}
            if "model" in labels:
                out[(m.group(1), labels["model"])] = float(m.group(3))
    return out


def mean_ms(before, after, fam, model):
    n = after.get((fam + "_count", model), 0) - before.get((fam + "_count", model), 0)
    s = after.get((fam + "_sum", model), 0) - before.get((fam + "_sum", model), 0)
    return s / n * 1e3 if n else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["resnet50", "small"], default="resnet50")
    ap.add_argument("--clients", default="1,4,16,32")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-delay-us", type=int, default=2000)
    ap.add_argument("--max-delays", default=None,
                    help="comma-separated max_delay_us values, each its own batching model (overrides --max-delay-us)")
    ap.add_argument("--only-on", action="store_true", help="skip the rows without batching")
    ap.add_argument("--device", default=None, help="the load's device (default: where it was exported)")
    ap.add_argument("--shoald-args", default="", help="more options for shoald, e.g. '--worker-binary PATH'")
    ap.add_argument("--timed", action="store_true",
                    help="serve the model inside bench_models.TimedRun: a second table splits each row's 'ran' "
                         "into the model's own time in the worker and the rest, beside the same batch sizes "
                         "run in this process")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(BUILD, "python"))
    import torch
    import shoal
    model, x = (resnet50 if args.model == "resnet50" else small_cnn)()
    input_device = "cuda" if args.device == "cuda" else None
    # One batch's compute in this process (the p99 target is max_delay + this): the median
    # of 10 runs of a max_batch batch, after 3 of warm-up.
    dev = torch.device(args.device or "cpu")
    model = model.to(dev)
    batch_ms = in_process_ms(model, x, args.max_batch, dev, runs=10, warm=3)
    model = model.cpu()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    tmp = tempfile.mkdtemp(prefix="shoal-batching-")
    if args.timed:
        import bench_models
        path = shoal.export(bench_models.TimedRun(model).eval(), os.path.join(tmp, "model.pt"))
    else:
        path = shoal.export(model, os.path.join(tmp, "model.pt"))
    socket = os.path.join(tmp, "shoal.sock")
    log = open(os.path.join(tmp, "shoald.log"), "w")
    metrics = os.path.join(tmp, "metrics.sock")
    proc = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", socket, "--workers",
                             str(args.workers), "--metrics-address", metrics, *args.shoald_args.split()], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(600):
            try:
                shoal.Client(socket).close()
                break
            except (shoal.Unavailable, FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.05)
        # (model name, max_delay_us); None: the plain model. One delay keeps the name "on".
        if args.max_delays:
            delays = [int(v) for v in args.max_delays.split(",")]
            batching = [(f"on-{d}", d) for d in delays]
        else:
            delays, batching = [args.max_delay_us], [("on", args.max_delay_us)]
        names = ([] if args.only_on else [("off", None)]) + batching
        with shoal.Client(socket) as c:
            for name, delay in names:
                if delay is None:
                    c.load(name, path, device=args.device)
                else:
                    c.load(name, path, device=args.device, max_batch=args.max_batch, max_delay_us=delay)
            targets = ", ".join(f"{d / 1e3 + batch_ms:.1f} ms" + (f" (max_delay_us {d})" if len(delays) > 1 else "")
                                for d in delays)
            print(f"model {args.model}, {args.workers} worker(s), torch {torch.__version__}, "
                  f"{'shoald ' + args.shoald_args + ', ' if args.shoald_args else ''}"
                  f"max_batch {args.max_batch}, max_delay_us {','.join(map(str, delays))}, {args.seconds} s per row; "
                  f"one batch of {args.max_batch} in-process: {batch_ms:.1f} ms, so the p99 target is {targets}")
            print("| clients | batching | jobs/s | p50 (ms) | p99 (ms) | mean size of runs >1 | queued (ms, mean) "
                  "| ran (ms, mean) |")
            print("|---|---|---|---|---|---|---|---|")
            timed_rows = []  # (clients, model name, [(rows, model ms) a job], ran ms)
            for n in [int(v) for v in args.clients.split(",")]:
                rate_off = None
                for name, _ in names:
                    before = next(m for m in c.models() if m["name"] == name)
                    seen = scrape(metrics)
                    rate, p50, p99, runs_seen = run_clients(socket, name, x, n, args.seconds, input_device,
                                                            args.timed)
                    now = scrape(metrics)
                    after = next(m for m in c.models() if m["name"] == name)
                    queued = mean_ms(seen, now, "shoal_queue_duration_seconds", name)
                    ran = mean_ms(seen, now, "shoal_compute_duration_seconds", name)
                    runs = after["batches"] - before["batches"]
                    mean = (after["batched_jobs"] - before["batched_jobs"]) / runs if runs else 1.0
                    speedup = f" ({rate / rate_off:.2f}x)" if rate_off else ""
                    rate_off = rate if name == "off" else rate_off
                    print(f"| {n} | {name} | {rate:.1f}{speedup} | {p50:.1f} | {p99:.1f} | {mean:.1f} | {queued:.2f} "
                          f"| {ran:.2f} |", flush=True)
                    if runs_seen:
                        timed_rows.append((n, name, runs_seen, ran))
            if timed_rows:
                print_timed(timed_rows, model, x, dev)
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def print_timed(timed_rows, model, x, dev):
    """--timed: each row's 'ran' (shoald: dispatch to answer, a job's mean) beside the
    model's own time in the worker (TimedRun's, a job's mean and p99) and the same batch
    sizes run in this process (a job's mean of the median at its batch's size)."""
    import gpu
    model = model.to(dev)
    sizes = sorted({int(r) for _, _, runs, _ in timed_rows for r, _ in runs})
    in_process_ms(model, x, sizes[-1], dev)  # this process's first run after the move costs more
    here = {rows: in_process_ms(model, x, rows, dev) for rows in sizes}
    print("\n| clients | batching | ran (ms, mean) | model in the worker (ms, mean) | p99 | same sizes in this "
          "process (ms, mean) | ran - model (ms) | model: worker / here |")
    print("|---|---|---|---|---|---|---|---|")
    for n, name, runs, ran in timed_rows:
        worker = statistics.mean(ms for _, ms in runs)
        same = statistics.mean(here[int(r)] for r, _ in runs)
        print(f"| {n} | {name} | {ran:.2f} | {worker:.2f} | {gpu.percentile([ms for _, ms in runs], 0.99):.2f} "
              f"| {same:.2f} | {ran - worker:.2f} | {worker / same:.2f} |")
    print("batch sizes seen: " + ", ".join(f"{r} ({here[r]:.2f} ms here)" for r in sizes), flush=True)


if __name__ == "__main__":
    main()
