"""The worker's Python side of one job, in-process: ``shoal._worker.Runner.handle`` on a
prepared message, as shoal-worker calls it for every job (the message decoded, the inputs
made into tensors over the client's arena, the model called, the reply encoded), with no
socket, shoald or client around it: what the worker's Python costs a job on this machine
and this torch, the part of the round trip that a TorchScript model (run in C++) skips.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/worker_handle.py [--jobs 5000] [--runs 3] [--device cpu|cuda] [--profile]
        [--batch 8,32]

The identity model (tests/models: the output is the input's own block) and x * 2 + 1 (a new
output, written into the worker's output arena and released after each job, untimed, as a
client's release would), each on a flat [1024] float32 and a [1, 3, 224, 224] image in a
client arena (a GPU arena with --device cuda); medians of --jobs calls per run,
then the median over --runs. --profile: cProfile of --jobs more calls per input, the
functions with the most time of their own. --batch: batches of that many members through
the same handle (dynamic batching's path), against joining their inputs and running the
model alone, per member.
"""
import argparse
import cProfile
import ctypes
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


def load(r, name, archive, device):
    """Loads ``archive`` into runner ``r`` as shoald's load message does."""
    fd = os.open(archive, os.O_RDONLY)
    reply = r.handle(msgpack.packb({"op": "load", "id": 1, "name": name, "path": archive, "device": device}), [fd])
    loaded = msgpack.unpackb(body_of(reply))
    if not loaded["ok"]:
        raise RuntimeError(f"load failed: {loaded}")


def runner_with(models, device):
    """A Runner (the worker's, interpreter 0) with ``models`` ({name: archive}) loaded and
    one client arena registered as shoald registers them; returns (runner, arena)."""
    r = _worker.Runner(0)
    for name, archive in models.items():
        load(r, name, archive, device)
    if device == "cuda":
        arena = _native.Arena.create_gpu(ARENA_BYTES, 0)
        r.handle(msgpack.packb({"op": "arena", "arena": 1, "size": arena.size, "gpu": _native.gpu_bus(0)}),
                 [os.dup(arena.fd)])
    else:
        arena = _native.Arena.create(ARENA_BYTES, "bench-worker-handle")
        r.handle(msgpack.packb({"op": "arena", "arena": 1}), [os.dup(arena.fd)])
    return r, arena


def infer_message(shape, rid, model="identity"):
    """What shoald sends for a job of one contiguous float32 input at the arena's start
    (supervisor/worker_pool_requests.cc, BeginInfer)."""
    desc = {"arena": 1, "block": 0, "offset": 0, "dtype": "float32", "shape": list(shape),
            "strides": _tensors.contiguous_strides(shape)}
    return msgpack.packb({"v": 1, "op": "infer", "id": rid, "interp": 0, "model": model, "client": 1,
                          "out_bytes": 64 << 20, "out_arenas": 8, "inputs": [desc]})


def body_of(reply):
    """A reply's bytes; the fds of output arenas it announces (shoald's to keep) are closed."""
    if isinstance(reply, tuple):
        reply, fds = reply
        for fd in fds:
            os.close(fd)
    return reply


def batch_message(shape, members, rid):
    """What shoald sends for a batch of ``members`` jobs of one client, each one ``shape``
    input in its own block of the arena (supervisor/worker_pool_requests.cc, RunBatch)."""
    nbytes = 4
    for n in shape:
        nbytes *= n
    batch = [{"job": rid + i, "client": 1,
              "inputs": [{"arena": 1, "block": i * nbytes, "offset": i * nbytes, "dtype": "float32",
                          "shape": list(shape), "strides": _tensors.contiguous_strides(shape)}]}
             for i in range(members)]
    return msgpack.packb({"v": 1, "op": "infer", "id": rid, "interp": 0, "model": "identity",
                          "out_bytes": 64 << 20, "out_arenas": 8, "batch": batch})


class Releaser:
    """Frees output blocks as the worker's C++ loop does for a client's `release`, through
    the runner's release entry (shm/output_release_api.h), so a benchmark's batches reuse
    blocks whose pages are already there, as a served model's do."""

    class _Api(ctypes.Structure):
        _fields_ = [("version", ctypes.c_int), ("arenas", ctypes.c_void_p),
                    ("release", ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64,
                                                 ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t, ctypes.c_char_p,
                                                 ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)))]

    def __init__(self, runner):
        self._capsule = runner.outputs.release_api()
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        self._api = self._Api.from_address(get(self._capsule, b"shoal._native.OutputArenas.release_api"))
        if self._api.version != 2:  # this layout, where a null notice frees only
            raise RuntimeError(f"release entry version {self._api.version}: this script knows version 2")
        self._mine = set()

    def release_outputs(self, bundle):
        """Frees the output blocks of every reply in a batch's reply bundle."""
        for body in msgpack.unpackb(bundle)["replies"]:
            self.release_output(body)

    def release_output(self, body):
        """Frees the output block of one reply (a tensor in a block of its own)."""
        (kind, val), = msgpack.unpackb(body)["outputs"].items()
        if kind == "tensor" and "arena" in val and val["arena"] in self.output_arenas(body):
            block = (ctypes.c_uint64 * 1)(val["block"])
            self._api.release(self._api.arenas, val["arena"], block, 1, None, 0, None)

    def output_arenas(self, body):
        """The worker's output arenas this runner has announced so far (an identity's output
        is the client's own block: not one to release)."""
        for a in msgpack.unpackb(body).get("new_arenas", ()):
            self._mine.add(a["arena"])
        return self._mine


def time_jobs(r, body, jobs, release):
    """The median seconds of one r.handle(body) over ``jobs`` calls; ``release`` frees the
    output blocks of each reply after it, untimed (Releaser.release_output for a job,
    release_outputs for a batch's bundle)."""
    times = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        reply = r.handle(body, [])
        times.append(time.perf_counter() - t0)
        release(body_of(reply))
    return statistics.median(times)


def batch_table(r, releaser, args):
    """Batches of identity jobs through Runner.handle against the model's own run on the
    joined input: the per-member cost of the batch path (views, join, split, one reply
    each, the bundle)."""
    shape = (1, 3, 64, 64)
    model = shoal_test_models.Identity()
    print("\n| members | Runner.handle a batch (us) | joining and the model alone (us) | beyond them, a member (us) |")
    print("|---|---|---|---|")
    for n in [int(v) for v in args.batch.split(",")]:
        body = batch_message(shape, n, 1000)
        bundle = body_of(r.handle(body, []))
        reply = msgpack.unpackb(bundle)
        if not all(msgpack.unpackb(b)["ok"] for b in reply["replies"]):
            raise RuntimeError(f"the batch failed: {reply}")
        releaser.release_outputs(bundle)
        parts = [torch.zeros(shape, device=args.device) for _ in range(n)]
        jobs = max(200, args.jobs // n)
        handled = statistics.median(time_jobs(r, body, jobs, releaser.release_outputs) for _ in range(args.runs))
        alone = statistics.median(time_jobs_fn(lambda: model(torch.cat(parts)), jobs, args.device)
                                  for _ in range(args.runs))
        print(f"| {n} | {handled * 1e6:.1f} | {alone * 1e6:.1f} | {(handled - alone) / n * 1e6:.2f} |")


def time_jobs_fn(fn, jobs, device):
    """The median seconds of fn() (synchronized on a GPU) over ``jobs`` calls."""
    times = []
    for _ in range(jobs):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--batch", default="",
                    help="also batches (dynamic batching's path) of these sizes, e.g. 8,32: [1, 3, 64, 64] inputs, "
                         "each member's time beyond the model's run on the joined input")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-worker-handle-")
    models = {"identity": shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt")),
              "affine": shoal.export(shoal_test_models.AddConst(), os.path.join(tmp, "affine.pt"))}
    r, arena = runner_with(models, args.device)
    releaser = Releaser(r)
    shapes = {"[1024] float32": (1024,), "[1, 3, 224, 224] float32": (1, 3, 224, 224)}
    bodies = {}
    for model, what in (("identity", "returned as it came"), ("affine", "x * 2 + 1: a new output")):
        for name, shape in shapes.items():
            bodies[f"{name}, {what}"] = infer_message(shape, 100 + len(bodies), model)
    for body in bodies.values():  # the reply must be a good one: an error is quicker
        reply = body_of(r.handle(body, []))
        if not msgpack.unpackb(reply).get("ok"):
            raise RuntimeError(f"the job failed: {msgpack.unpackb(reply)}")
        releaser.release_output(reply)
        time_jobs(r, body, 200, releaser.release_output)
    results = {name: [] for name in bodies}
    for _ in range(args.runs):
        for name, body in bodies.items():
            results[name].append(time_jobs(r, body, args.jobs, releaser.release_output))
    print(f"{os.cpu_count()} cpus, torch {torch.__version__}, Python {sys.version.split()[0]}, device {args.device}, "
          f"{args.runs} runs x {args.jobs} jobs")
    print("| input, model | Runner.handle a job (us, median) |")
    print("|---|---|")
    for name, rs in results.items():
        print(f"| {name} | {statistics.median(rs) * 1e6:.2f} |")
    if args.batch:
        batch_table(r, releaser, args)
    if args.profile:
        for name, body in bodies.items():
            prof = cProfile.Profile()
            for _ in range(args.jobs):
                prof.enable()
                reply = r.handle(body, [])
                prof.disable()
                releaser.release_output(body_of(reply))
            print(f"\n{name}: cProfile of {args.jobs} jobs, by time of their own")
            pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    del r, arena


if __name__ == "__main__":
    main()
