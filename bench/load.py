"""Load time and memory of a model with ~500 MB of weights: shoal's mapped loading
(shoal.archive.load: the archive is mapped read-only, storages are views) against
torch.package.PackageImporter.load_pickle (which copies every storage into memory).

One command (after scripts/build.sh):
    /usr/bin/python3 bench/load.py [--mb 500] [--runs 5]

Each load runs in a fresh process (so nothing is cached in Python), alternating the two
ways; the archive is in the page cache for both (it was just written). Reported: median
load time, anonymous memory added by the load (from /proc/self/smaps_rollup), and the
time of the first forward pass after loading (which, for shoal, faults the mapped pages in).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[4])
import torch
import shoal
def anon():
    for line in open('/proc/self/smaps_rollup'):
        if line.startswith('Anonymous:'):
            return int(line.split()[1]) / 1024
how, path = sys.argv[1], sys.argv[2]
a0 = anon()
t0 = time.perf_counter()
if how == 'shoal':
    m = shoal.archive.load(path)
else:
    from torch.package import PackageImporter
    m = PackageImporter(path).load_pickle('model', 'model.pkl')
    m.eval()
t1 = time.perf_counter()
a1 = anon()
with torch.no_grad():
    m(torch.ones(1, m.n))
t2 = time.perf_counter()
print(json.dumps({'load_s': t1 - t0, 'anon_mb': a1 - a0, 'first_forward_s': t2 - t1}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(BUILD, "python"))
    sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
    import shoal
    import shoal_test_models
    tmp = tempfile.mkdtemp(prefix="shoal-load-")
    path = shoal.export(shoal_test_models.BigWeights(args.mb), os.path.join(tmp, "big.pt"))
    size_mb = os.path.getsize(path) / 2**20
    results = {"shoal": [], "PackageImporter": []}
    for _ in range(args.runs):
        for how in results:
            out = subprocess.run([sys.executable, "-c", CHILD, "shoal" if how == "shoal" else "importer", path,
                                  os.path.join(BUILD, "python"), os.path.join(HERE, "..", "tests", "models")],
                                 capture_output=True, text=True, check=True)
            results[how].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"archive {size_mb:.0f} MiB, runs={args.runs}, cpus={os.cpu_count()}")
    print("| loader | load (ms) | anonymous memory added (MB) | first forward (ms) |")
    print("|---|---|---|---|")
    med = {}
    for how, rs in results.items():
        med[how] = statistics.median(r["load_s"] for r in rs)
        print(f"| {how} | {med[how] * 1000:.1f} | {statistics.median(r['anon_mb'] for r in rs):.0f} | "
              f"{statistics.median(r['first_forward_s'] for r in rs) * 1000:.1f} |")
    print(f"load speed-up: {med['PackageImporter'] / med['shoal']:.1f}x")


if __name__ == "__main__":
    main()
