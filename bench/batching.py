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


def run_clients(socket, model, x, n, seconds, device):
    """(jobs/s, p50 ms, p99 ms) of n clients, each in its own process (bench/gpu.py)."""
    import gpu
    rate, lat = gpu.drive_processes(socket, model, x, n, seconds, device)
    return rate, gpu.percentile(lat, 0.5), gpu.percentile(lat, 0.99)


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
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(BUILD, "python"))
    import torch
    import shoal
    model, x = (resnet50 if args.model == "resnet50" else small_cnn)()
    input_device = "cuda" if args.device == "cuda" else None
    # One batch's compute in this process (the p99 target is max_delay + this): the median
    # of 10 runs of a max_batch batch, after 3 of warm-up.
    dev = torch.device(args.device or "cpu")
    m, xb = model.to(dev), x.to(dev).repeat(args.max_batch, *([1] * (x.dim() - 1)))
    times = []
    with torch.no_grad():
        for i in range(13):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m(xb)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                times.append(time.perf_counter() - t0)
    batch_ms = statistics.median(times) * 1e3
    model = model.cpu()
    del m, xb
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    tmp = tempfile.mkdtemp(prefix="shoal-batching-")
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
            for n in [int(v) for v in args.clients.split(",")]:
                rate_off = None
                for name, _ in names:
                    before = next(m for m in c.models() if m["name"] == name)
                    seen = scrape(metrics)
                    rate, p50, p99 = run_clients(socket, name, x, n, args.seconds, input_device)
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
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


if __name__ == "__main__":
    main()
