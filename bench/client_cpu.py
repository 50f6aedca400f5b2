"""The Python client's own CPU time a job (time.process_time of the client process), beside
the round trip's wall time: what the client's Python costs, with the waiting left out; and
shoald's and the worker's CPU a job over the same jobs (/proc/PID/stat): where a job's CPU
goes.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/client_cpu.py [--runs 5] [--jobs 2000] [--profile]

Starts shoald as bench/gpu.py does (1 worker, no GPUs) and loads the identity model; one
client, one job at a time, a 4 KiB input in the client's arena (c.empty) and an ordinary
tensor (copied into it per job).
Medians over --runs runs. CPU time is less noisy than wall time on shared machines, so a
change to the client's Python shows here when the round trip's spread would hide it.
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
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402
from gpu import Daemon  # noqa: E402  (bench/gpu.py's shoald, started and stopped)


def process_cpu_s(pid):
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--profile", action="store_true",
                    help="then cProfile the client over --jobs more jobs per input: the functions with the most "
                         "time of their own")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="shoal-client-cpu-")
    archive = shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt"))
    daemon = Daemon(1, tmp, "cpu")
    try:
        c = shoal.Client(daemon.socket)
        c.load("identity", archive)
        arena_input = c.empty((1024,))
        arena_input.fill_(1.0)
        inputs = {"4 KiB in the client's arena": arena_input, "4 KiB ordinary tensor (one copy)": torch.ones(1024)}
        servers = [daemon.proc.pid, *daemon.worker_pids()]  # shoald, then its one worker
        for x in inputs.values():
            for _ in range(args.jobs // 4):
                c.infer("identity", x)
        results = {name: [] for name in inputs}
        profiles = {}
        for _ in range(args.runs):
            for name, x in inputs.items():
                theirs = [process_cpu_s(p) for p in servers]
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.jobs):
                    c.infer("identity", x)
                per_job = [(time.process_time() - cpu) / args.jobs * 1e6,
                           (time.perf_counter() - wall) / args.jobs * 1e6]
                per_job += [(process_cpu_s(p) - t) / args.jobs * 1e6 for p, t in zip(servers, theirs)]
                results[name].append(per_job)
        if args.profile:
            for name, x in inputs.items():
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(args.jobs):
                    c.infer("identity", x)
                prof.disable()
                profiles[name] = prof
    finally:
        daemon.stop()
    print(f"runs={args.runs} jobs={args.jobs} cpus={os.cpu_count()} torch={torch.__version__}")
    print("| input | client CPU a job (us) | round trip a job (us) | shoald CPU a job (us) | worker CPU a job (us) |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        print(f"| {name} | " + " | ".join(f"{statistics.median(r[i] for r in runs):.1f}" for i in range(4)) + " |")
    for name, prof in profiles.items():
        print(f"\n{name}: cProfile of the client over {args.jobs} jobs, by time of their own")
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
