"""The worker's Python side of one job, in-process: ``shoal._worker.Runner.handle`` on a
prepared message, as shoal-worker calls it for every job (the message decoded, the inputs
made into tensors over the client's arena, the model called, the reply encoded), with no
socket, shoald or client around it: what the worker's Python costs a job on this machine
and this torch, the part of the round trip that a TorchScript model (run in C++) skips.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/worker_handle.py [--jobs 5000] [--runs 3] [--device cpu|cuda] [--profile]

The identity model (tests/models), its input a flat [1024] float32 and a [1, 3, 224, 224]
image in a client arena (a GPU arena with --device cuda); medians of --jobs calls per run,
then the median over --runs. --profile: cProfile of --jobs more calls per input, the
functions with the most time of their own.
"""
import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.abspath(os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build")))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))

import msgpack  # noqa: E402
import torch  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402
from shoal import _native, _tensors, _worker  # noqa: E402

ARENA_BYTES = 8 << 20


def runner_with(archive, device):
    """A Runner (the worker's, interpreter 0) with the identity loaded and one client arena
    registered as shoald registers them; returns (runner, arena)."""
    r = _worker.Runner(0)
    fd = os.open(archive, os.O_RDONLY)
    reply = r.handle(msgpack.packb({"op": "load", "id": 1, "name": "identity", "path": archive,
                                    "device": "cuda" if device == "cuda" else "cpu"}), [fd])
    if not msgpack.unpackb(reply if isinstance(reply, bytes) else reply[0])["ok"]:
        raise RuntimeError(f"load failed: {msgpack.unpackb(reply)}")
    if device == "cuda":
        arena = _native.Arena.create_gpu(ARENA_BYTES, 0)
        r.handle(msgpack.packb({"op": "arena", "arena": 1, "size": arena.size, "gpu": _native.gpu_bus(0)}),
                 [os.dup(arena.fd)])
    else:
        arena = _native.Arena.create(ARENA_BYTES, "bench-worker-handle")
        r.handle(msgpack.packb({"op": "arena", "arena": 1}), [os.dup(arena.fd)])
    return r, arena


def infer_message(shape, rid):
    """What shoald sends for a job of one contiguous float32 input at the arena's start
    (supervisor/worker_pool_requests.cc, BeginInfer)."""
    desc = {"arena": 1, "block": 0, "offset": 0, "dtype": "float32", "shape": list(shape),
            "strides": _tensors.contiguous_strides(shape)}
    return msgpack.packb({"v": 1, "op": "infer", "id": rid, "interp": 0, "model": "identity", "client": 1,
                          "out_bytes": 64 << 20, "out_arenas": 8, "inputs": [desc]})


def time_jobs(r, body, jobs):
    """The median seconds of one r.handle(body) over ``jobs`` calls."""
    times = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        reply = r.handle(body, [])
        times.append(time.perf_counter() - t0)
        del reply
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-worker-handle-")
    archive = shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt"))
    r, arena = runner_with(archive, args.device)
    shapes = {"[1024] float32": (1024,), "[1, 3, 224, 224] float32": (1, 3, 224, 224)}
    bodies = {name: infer_message(shape, 100 + i) for i, (name, shape) in enumerate(shapes.items())}
    for body in bodies.values():  # the reply must be a good one: an error is quicker
        reply = msgpack.unpackb(r.handle(body, []))
        if not reply.get("ok"):
            raise RuntimeError(f"the job failed: {reply}")
        time_jobs(r, body, 200)
    results = {name: [] for name in bodies}
    for _ in range(args.runs):
        for name, body in bodies.items():
            results[name].append(time_jobs(r, body, args.jobs))
    print(f"{os.cpu_count()} cpus, torch {torch.__version__}, Python {sys.version.split()[0]}, device {args.device}, "
          f"{args.runs} runs x {args.jobs} jobs")
    print("| input | Runner.handle a job (us, median) |")
    print("|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(rs) * 1e6:.2f} |")
    if args.profile:
        for name, body in bodies.items():
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(args.jobs):
                r.handle(body, [])
            prof.disable()
            print(f"\n{name}: cProfile of {args.jobs} jobs, by time of their own")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    del r, arena


if __name__ == "__main__":
    main()
