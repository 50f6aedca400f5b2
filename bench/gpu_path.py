"""Where the GPU identity round trip's time goes, against the CPU one (issue 13's target:
a GPU input within 100 us of a CPU input).

One command on the GPU machine (after scripts/gpu.sh test, or scripts/build.sh):
    python3 bench/gpu_path.py [--jobs 2000] [--runs 3]
(`--device cpu` checks the harness on a machine without a GPU; its GPU rows are absent.)

1. The round trip split in three by the clock every process shares (time.perf_counter is
   CLOCK_MONOTONIC): a model that returns its input and the times its forward began and
   ended; the client notes when it called infer and when infer returned. "to forward" is
   the client's request, shoald and the worker's decoding and input views; "forward" the
   model; "back" the worker's output encoding and synchronise, shoald, the client's
   decoding and output views. 4 KiB input in a CPU arena and in a GPU arena (c.empty),
   one worker, one job at a time; medians of --jobs jobs, then the median over --runs,
   the two inputs alternating.
2. The GPU steps of that path, timed alone in this process on GPU arena memory (what the
   client and the worker do per job): a tensor over arena bytes through
   __cuda_array_interface__ (torch.as_tensor, as gpu_view did), through DLPack (as it does
   now: the client's views, the worker's output copies), as a slice of a tensor made once
   per arena (the worker's inputs), torch.cuda.synchronize() with the GPU idle.
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

import torch  # noqa: E402

import shoal  # noqa: E402
from shoal import _native, _tensors  # noqa: E402
from gpu import Daemon  # noqa: E402  (bench/gpu.py's shoald, started and stopped)
# A module of its own: a model class in __main__ would take this script's imports (bench/gpu.py,
# then transformers and all it pulls in) into the archive.
from shoal_test_models import StampedIdentity  # noqa: E402


def split_round_trip(c, x, jobs):
    """Medians (us) of: whole round trip, to forward, forward, back."""
    for _ in range(100):
        c.infer("stamped", x)
    rows = []
    for _ in range(jobs):
        a = time.perf_counter()
        _, stamps = c.infer("stamped", x)
        b = time.perf_counter()
        t0, t1 = stamps.tolist()
        rows.append((b - a, t0 - a, t1 - t0, b - t1))
    return [statistics.median(r[i] for r in rows) * 1e6 for i in range(4)]


def per_call_us(fn, n=2000):
    for _ in range(100):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


class _CudaArrayInterface:
    """What gpu_view passed torch.as_tensor before it used DLPack (the comparison's baseline)."""

    def __init__(self, owner, address, nbytes):
        self.owner = owner
        self.__cuda_array_interface__ = {"shape": (nbytes,), "typestr": "|u1", "data": (address, False),
                                         "version": 2}


def gpu_steps(ordinal):
    arena = _native.Arena.create_gpu(64 << 20, ordinal)
    desc = {"dtype": "float32", "shape": [1024], "strides": [1], "offset": 4096}
    base = _tensors.gpu_base(arena, ordinal)  # the worker's, once per arena
    device = torch.device("cuda", ordinal)

    def interface_bytes(owner, address, nbytes, dev):
        return torch.as_tensor(_CudaArrayInterface(owner, address, nbytes), device=device)

    def view():
        # gpu_view; under with_interface its bytes are made as before DLPack, so the two rows
        # differ only in how the byte tensor is made. (Until 2026-12-07 the first row was a
        # bare as_tensor + view without gpu_view's bookkeeping: cheaper for that alone.)
        return _tensors.gpu_view(arena, ordinal, arena.address, 0, desc)

    def with_interface(fn):  # fn run with device_bytes swapped for as_tensor
        def timed():
            made = _tensors.device_bytes
            _tensors.device_bytes = interface_bytes
            try:
                return fn()
            finally:
                _tensors.device_bytes = made
        return timed

    def sliced():
        return _tensors.gpu_slice(base, desc)

    assert torch.equal(sliced(), view()) and torch.equal(with_interface(view)(), view())
    torch.cuda.synchronize()
    return [("a tensor over arena bytes by torch.as_tensor(__cuda_array_interface__) (the old gpu_view)",
             with_interface(lambda: per_call_us(view))()),
            ("the same by DLPack (_tensors.gpu_view now: client views, worker output copies)", per_call_us(view)),
            ("the same as a slice of one tensor over the whole arena (_tensors.gpu_slice: worker inputs)",
             per_call_us(sliced)),
            ("torch.cuda.synchronize(), GPU idle", per_call_us(torch.cuda.synchronize)),
            ("torch.cuda.synchronize(ordinal), GPU idle (the client's, before a request)",
             per_call_us(lambda: torch.cuda.synchronize(ordinal))),
            ("torch.cuda.current_stream().synchronize(), GPU idle",
             per_call_us(lambda: torch.cuda.current_stream().synchronize()))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    wheres = ["cpu"] + (["cuda"] if args.device == "cuda" else [])
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no usable GPU here: run with --device cpu to check the harness", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        archive = shoal.export(StampedIdentity(), os.path.join(tmp, "stamped.pt"))
        d = Daemon(1, tmp, args.device)
        try:
            runs = {w: [] for w in wheres}
            with shoal.Client(d.socket) as c:
                c.load("stamped", archive)
                xs = {w: c.empty((1024,), device=w).fill_(1) for w in wheres}
                for _ in range(args.runs):
                    for w in wheres:
                        runs[w].append(split_round_trip(c, xs[w], args.jobs))
        finally:
            d.stop()
    print(f"{torch.__version__}, {torch.cuda.get_device_name(0) if args.device == 'cuda' else 'no GPU'}, "
          f"{os.cpu_count()} CPUs; medians of {args.jobs} jobs, median of {args.runs} runs")
    print("\n| input | round trip (us) | to forward (us) | forward (us) | back (us) |\n|---|---|---|---|---|")
    for w in wheres:
        med = [statistics.median(r[i] for r in runs[w]) for i in range(4)]
        print(f"| 4 KiB in a {w.upper()} arena | " + " | ".join(f"{v:.1f}" for v in med) + " |")
    if args.device == "cuda":
        print("\n| GPU step, in this process | us a call |\n|---|---|")
        for what, us in gpu_steps(torch.cuda.current_device()):
            print(f"| {what} | {us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
