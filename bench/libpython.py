"""What embedding costs Python itself: the same Python-bound model run in-process by the
`python3` executable and by a minimal embedder linked against libpython3.X.so (what every
embedded interpreter, shoal-worker's included, runs on; shoal-worker-py runs on python3).

One command (needs a C compiler and python3-dev, which scripts/setup.sh installs):
    /usr/bin/python3 bench/libpython.py [--runs 5] [--seconds 3]

The embedder is `int main(argc, argv) { return Py_BytesMain(argc, argv); }`, built here
with `python3-config --embed`; both run this file's `--loop` mode (PythonBound of
bench/bench_models.py, batch 1, one thread), alternating, and the medians are printed. On
Debian the executable is built with PGO and LTO, and the shared library is not.
"""
import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def loop(seconds):
    sys.path.insert(0, HERE)
    import torch
    import bench_models
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = bench_models.PythonBound().eval()
    x = torch.randn(1, 32)
    with torch.no_grad():
        for _ in range(200):
            net(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() < t0 + seconds:
            net(x)
            n += 1
    print(n / seconds)


def build_embedder(tmp):
    # This Python's own python3.X-config (not the first on PATH: a pyenv's, say).
    config = os.path.join(os.path.dirname(os.path.realpath(sys.executable)),
                          f"python{sysconfig.get_python_version()}-config")
    if not os.path.exists(config):
        sys.exit(f"no {config}: install python3-dev")
    src = os.path.join(tmp, "embed.c")
    with open(src, "w") as f:
        f.write("#include <Python.h>\nint main(int argc, char** argv) { return Py_BytesMain(argc, argv); }\n")
    flags = subprocess.run([config, "--includes", "--ldflags", "--embed"], capture_output=True, text=True,
                           check=True).stdout.split()
    exe = os.path.join(tmp, "embed")
    subprocess.run(["cc", "-O2", src, "-o", exe, *flags], check=True)
    return exe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--loop", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        return loop(args.seconds)
    tmp = tempfile.mkdtemp(prefix="shoal-libpython-")
    embedder = build_embedder(tmp)
    linked = subprocess.run(["ldd", embedder], capture_output=True, text=True).stdout
    lib = next((line.split()[0] for line in linked.splitlines() if "libpython" in line), "?")
    rates = {"executable": [], "embedded": []}
    for _ in range(args.runs):
        for name, exe in (("executable", sys.executable), ("embedded", embedder)):
            out = subprocess.run([exe, os.path.abspath(__file__), "--loop", "--seconds", str(args.seconds)],
                                 capture_output=True, text=True, check=True).stdout
            rates[name].append(float(out.split()[-1]))
    print(f"Python {sysconfig.get_python_version()} ({sys.executable} against an embedder linked with {lib}), "
          f"{os.cpu_count()} cores, {args.runs} runs x {args.seconds} s, alternating")
    print("| run | executable (calls/s) | embedded (calls/s) | ratio |")
    print("|---|---|---|---|")
    for i, (a, b) in enumerate(zip(rates["executable"], rates["embedded"])):
        print(f"| {i} | {a:.0f} | {b:.0f} | {b / a:.3f} |")
    a, b = statistics.median(rates["executable"]), statistics.median(rates["embedded"])
    ratios = [y / x for x, y in zip(rates["executable"], rates["embedded"])]
    print(f"| median | {a:.0f} | {b:.0f} | {statistics.median(ratios):.3f} |")


if __name__ == "__main__":
    main()
