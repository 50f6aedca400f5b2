"""The paper's evaluation, side by side (issue 15): shoal serving a model against the
paper's TorchScript baseline, in-process eager Python and a torch.multiprocessing pool,
over the number of slots.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/paper.py [--models resnet50,bert,python_bound] [--slots 1,2,4]
        [--seconds 3] [--rounds 3] [--device cpu|cuda] [--out FILE.md]
(on the GPU host, after scripts/gpu.sh test: scripts/gpu.sh run /usr/bin/env python3 bench/paper.py ...)

Models, random weights (no download), skipped with a message where torchvision /
transformers is missing: ResNet-50 (1x3x224x224), BERT-base (BertConfig(), 1x128 ids),
python_bound (bench/bench_models.py, 1x32: the interpreter's time dominates).
For each model and each slot count N (default: 1, 2, 4, 8, 16 up to this process's cores),
these contenders, each kept busy by N callers:
  (a)  shoal python       shoald --workers N serving the packaged model (shoal.export);
  (a') shoal python 1xN   shoald --workers 1 --interpreters N (python_bound, N > 1, where
                          this torch allows several interpreters per process: torch 1.x);
  (b)  shoal torchscript  the same daemon as (a) serving the model's torch.jit.trace, saved;
  (c)  C++ threads        the paper's baseline, build/bin/bench_ts_threads: that TorchScript
                          file run by N C++ threads through libtorch (the floor of (b));
  (c2) C++ processes      the same baseline as N processes of one thread each (N > 1, CPU):
                          what N slots cost as processes rather than threads, with no shoal
                          anywhere (each loads its own copy of the weights; their windows
                          start together); items/s summed, p50 and p99 the median of theirs;
  (d)  eager threads      the model in this process, called by N Python threads;
  (e)  mp pool            what a user would write instead: N torch.multiprocessing processes
                          holding the model, fed through queues (tensors travel in shared
                          memory), one reply queue per caller.
The callers of (a), (a'), (b) and (e) are N threads of this process, as in a Python
application server: each with its own shoal.Client and its input in that client's arena,
or its own reply queue. For python_bound, "(a) shoal python, N caller processes" runs the
same daemon's model from N processes instead (bench/gpu.py's drive_processes()), since N
threads of one process queue on its GIL and can become the bottleneck themselves. Every process uses OMP_NUM_THREADS intra-op threads (1 unless set),
so N is the parallelism. Each round runs every contender once, in turn, for --seconds
after one warm-up call per caller (bench/gpu.py's drive(): only calls that end inside the
window count); items/s, p50 and p99 are medians over --rounds rounds, "calls/round" the
fewest calls one round completed (below 30 the rate moves in steps of over 3%: raise
--seconds). "x own 1 slot" divides by the same contender's 1-slot figure ((a') by (a)'s),
"x (c)" by the C++ threads at the same N. The table, then the targets and whether they
were met, are printed and written to --out.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported, here and in every child
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
INTRA_OP = int(os.environ["OMP_NUM_THREADS"])

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import torch  # noqa: E402
import torch.multiprocessing  # noqa: E402

import gpu  # noqa: E402  (the harness: models, drive(), percentile(), Daemon)
import shoal  # noqa: E402  (gpu put the build's python/ on the path)

torch.set_num_threads(INTRA_OP)

MIN_CALLS = 30  # fewer calls per window than this and a rate moves in steps of over 3%
A, A1, B, C, D, E = ("(a) shoal python", "(a') shoal python 1xN interpreters", "(b) shoal torchscript",
                     "(c) C++ threads (TorchScript)", "(d) eager Python threads", "(e) mp pool")
AP = "(a) shoal python, N caller processes"
C2 = "(c2) C++ processes (TorchScript)"


def pool_worker(module, requests, replies, ready, device):
    """One process of (e): runs the model on each request, answers on the caller's queue."""
    torch.set_num_threads(INTRA_OP)
    ready.put(os.getpid())
    with torch.no_grad():
        while (item := requests.get()) is not None:
            caller, x = item
            y = module(x)
            if device == "cuda":
                torch.cuda.synchronize()
            replies[caller].put(y)


class ProcessPool:
    """(e): `processes` spawned processes holding `module` (its tensors shared, not copied),
    one request queue they all take from, one reply queue per caller."""

    def __init__(self, module, processes, callers, device):
        ctx = torch.multiprocessing.get_context("spawn")  # fork cannot carry CUDA
        self.requests = ctx.Queue()
        self.replies = [ctx.Queue() for _ in range(callers)]
        ready = ctx.Queue()
        self.procs = [ctx.Process(target=pool_worker, args=(module, self.requests, self.replies, ready, device),
                                  daemon=True) for _ in range(processes)]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            ready.get(timeout=300)

    def call(self, caller, x):
        self.requests.put((caller, x))
        return self.replies[caller].get()

    def stop(self):
        for _ in self.procs:
            self.requests.put(None)
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()


def summarise(rate_lat):
    """(items/s, p50 ms, p99 ms) of one drive() result."""
    rate, lat = rate_lat
    return rate, gpu.percentile(lat, 0.5), gpu.percentile(lat, 0.99)


def cpp_threads(ts_path, n, x, dev, seconds, processes=1):
    """(c): bench_ts_threads on the TorchScript file, n threads; (calls/s, p50, p99). With
    processes > 1 ((c2)): that many bench_ts_threads, n threads each, their windows started
    together once all have loaded and warmed up (SHOAL_BENCH_START_LINE); calls/s summed, p50
    and p99 the median of theirs."""
    dtype = {torch.float32: "float32", torch.int64: "int64"}[x.dtype]
    args = [os.path.join(gpu.BUILD, "bin", "bench_ts_threads"), ts_path, str(n), str(seconds), str(INTRA_OP),
            dev, dtype, *(str(d) for d in x.shape)]
    if processes == 1:
        out = subprocess.run(args, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"bench_ts_threads exited {out.returncode}: {out.stderr.strip()[-1500:]}")
        return tuple(float(v) for v in out.stdout.split())
    env = dict(os.environ, SHOAL_BENCH_START_LINE="1")
    procs = [subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(processes)]
    try:
        for proc in procs:  # each says "ready" once warm (or ends: its error follows)
            if proc.stdout.readline().strip() != "ready":
                proc.wait()
                raise RuntimeError(f"bench_ts_threads exited {proc.returncode}: {proc.stderr.read().strip()[-1500:]}")
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"bench_ts_threads exited {proc.returncode}: {err.strip()[-1500:]}")
            results.append(tuple(float(v) for v in out.split()))
    finally:
        for proc in procs:  # none outlives a failure
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return (sum(r[0] for r in results), statistics.median(r[1] for r in results),
            statistics.median(r[2] for r in results))


def eager_caller(module, x, dev):
    def call():
        with torch.no_grad():
            module(x)
        if dev == "cuda":
            torch.cuda.synchronize()
    return call


def shoal_callers(socket, model, x, n, dev, opened):
    """n callers of `model` on shoald at `socket`, each with its own client and arena input."""
    fns = []
    for _ in range(n):
        c = shoal.Client(socket)
        opened.append(c)
        xa = c.empty(x.shape, x.dtype, device=dev)
        xa.copy_(x)
        fns.append(lambda c=c, xa=xa: c.infer(model, xa))
    return fns


def bench_slots(label, module, x, py_path, ts_path, n, args, tmp):
    """Every contender of one model at n slots, --rounds rounds; {contender: [(items/s, p50, p99)]}."""
    dev = args.device
    batch = x.shape[0]
    contenders = {}
    daemons, clients, pools = [], [], []
    try:
        d = gpu.Daemon(n, tmp, dev)
        daemons.append(d)
        with shoal.Client(d.socket) as c:
            c.load("py", py_path)
            c.load("ts", ts_path)
        fns_a = shoal_callers(d.socket, "py", x, n, dev, clients)
        contenders[A] = lambda: summarise(gpu.drive(fns_a, args.seconds))
        if label.startswith("python_bound"):  # callers that are not the bottleneck
            contenders[AP] = lambda: summarise(gpu.drive_processes(d.socket, "py", x, n, args.seconds, dev))
        if label.startswith("python_bound") and n > 1:
            try:
                di = gpu.Daemon(1, tmp, dev, interpreters=n)
            except RuntimeError as e:
                print(f"{label}: skipping {A1} at N={n}: {str(e).strip().splitlines()[-1]}", flush=True)
            else:
                daemons.append(di)
                with shoal.Client(di.socket) as c:
                    c.load("py", py_path)
                fns_a1 = shoal_callers(di.socket, "py", x, n, dev, clients)
                contenders[A1] = lambda: summarise(gpu.drive(fns_a1, args.seconds))
        fns_b = shoal_callers(d.socket, "ts", x, n, dev, clients)
        contenders[B] = lambda: summarise(gpu.drive(fns_b, args.seconds))
        contenders[C] = lambda: cpp_threads(ts_path, n, x, dev, args.seconds)
        if n > 1 and dev == "cpu":
            contenders[C2] = lambda: cpp_threads(ts_path, 1, x, dev, args.seconds, processes=n)
        fns_d = [eager_caller(module, x, dev) for _ in range(n)]
        contenders[D] = lambda: summarise(gpu.drive(fns_d, args.seconds))
        pool = ProcessPool(module, n, n, dev)
        pools.append(pool)
        inputs = [x.clone().share_memory_() if dev == "cpu" else x.clone() for _ in range(n)]
        fns_e = [lambda i=i: pool.call(i, inputs[i]) for i in range(n)]
        contenders[E] = lambda: summarise(gpu.drive(fns_e, args.seconds))
        results = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name, run in contenders.items():
                rate, p50, p99 = run()
                calls = round(rate * args.seconds)
                results[name].append((rate * batch, p50, p99, calls))
                print(f"  {label} N={n} round {r}: {name}: {rate * batch:.1f} items/s, p50 {p50:.2f} ms, "
                      f"p99 {p99:.2f} ms", file=sys.stderr, flush=True)
        return results
    finally:
        for c in clients:
            c.close()
        for p in pools:
            p.stop()
        for d in daemons:
            d.stop()


def targets(rows, cores, large_models):
    """Lines saying, for each target of issue 15, what was measured and whether it was met."""
    by = {(m, n, c): (rate, p50, p99) for m, n, c, rate, p50, p99, _ in rows}
    lines = []
    for (m, n, c), (rate, p50, p99) in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        if c == A and m in large_models and (m, n, C) in by:
            floor = by[(m, n, C)][0]
            lines.append(f"- {m}, {n} slot(s): (a) / (c) = {ratio(rate, floor)} (target >= 0.97): "
                         f"{'met' if floor and rate / floor >= 0.97 else 'NOT met'}")
        if c == C2 and (m, n, C) in by and (m, n, A) in by:
            lines.append(f"- {m}, {n} slots: the baseline as {n} processes, (c2) / (c) = {ratio(rate, by[(m, n, C)][0])}; "
                         f"(a) / (c2) = {ratio(by[(m, n, A)][0], rate)} (what processes cost, and what shoal "
                         "costs beyond them; no target)")
        if c == A and (m, n, E) in by:
            e = by[(m, n, E)]
            met = rate > e[0] and p50 < e[1] and p99 < e[2]
            lines.append(f"- {m}, {n} slot(s): (a) vs (e): {rate:.1f} vs {e[0]:.1f} items/s, p50 {p50:.2f} vs "
                         f"{e[1]:.2f} ms, p99 {p99:.2f} vs {e[2]:.2f} ms (target: shoal higher throughput, "
                         f"lower p50 and p99): {'met' if met else 'NOT met'}")
        base = AP if c == AP else A  # each caller arrangement against its own 1 slot
        if c in (A, A1, AP) and m not in large_models and n > 1 and (m, 1, base) in by:
            one = by[(m, 1, base)][0]
            want = 0.9 * min(n, cores)
            lines.append(f"- {m}, {n} slots: {c} = {ratio(rate, one)} x {base} at 1 slot "
                         f"(target >= 0.9 x min({n}, {cores} cores) = {want:.2f}): "
                         f"{'met' if one and rate / one >= want else 'NOT met'}")
    return lines


def ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def machine(dev):
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    text = (f"{len(os.sched_getaffinity(0))} cores ({cpu}), {platform.platform()}, Python "
            f"{platform.python_version()}, torch {torch.__version__}")
    if dev == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text


def main():
    cores = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet50,bert,python_bound")
    p.add_argument("--slots", default=",".join(str(n) for n in (1, 2, 4, 8, 16) if n <= cores))
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/paper.py --device cuda needs a GPU")
        return 1
    slots = [int(n) for n in args.slots.split(",")]
    rows = []
    large = set()
    with tempfile.TemporaryDirectory(prefix="shoal-paper-bench-") as tmp:
        for label, module, x, extern in gpu.make_models(args.models.split(","), args.device):
            if not label.startswith("python_bound"):
                large.add(label)
            key = label.split()[0].lower().replace("-", "")
            with torch.no_grad():
                scripted = torch.jit.trace(module, x, check_trace=False)
            ts_path = os.path.join(tmp, f"{key}_ts.pt")
            torch.jit.save(scripted, ts_path)
            py_path = shoal.export(module, os.path.join(tmp, f"{key}.pt"), extern=extern)
            for n in slots:
                try:
                    results = bench_slots(label, module, x, py_path, ts_path, n, args, tmp)
                except Exception as e:  # noqa: BLE001 - one failure must not lose the other figures
                    print(f"{label} N={n}: failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
                    continue
                for name, runs in results.items():
                    rows.append((label, n, name, *(statistics.median(r[i] for r in runs) for i in range(3)),
                                 min(r[3] for r in runs)))
    by = {(m, n, c): rate for m, n, c, rate, *_ in rows}
    lines = [f"machine: {machine(args.device)}", f"command: {' '.join([sys.executable] + sys.argv)}",
             f"device {args.device}, OMP_NUM_THREADS={INTRA_OP}, medians of {args.rounds} rounds x {args.seconds} s",
             "", "| model | slots | contender | items/s | x own 1 slot | x (c) | p50 (ms) | p99 (ms) | calls/round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, n, c, rate, p50, p99, calls in rows:
        own = by.get((m, 1, {A1: A, C2: C}.get(c, c)))
        cpp = by.get((m, n, C))
        lines.append(f"| {m} | {n} | {c} | {rate:.1f} | {ratio(rate, own)} | {ratio(rate, cpp)} | {p50:.2f} | "
                     f"{p99:.2f} | {calls} |")
    few = sorted({m for m, *_, calls in rows if calls < MIN_CALLS})
    if few:
        lines += ["", f"Too few calls in a window for {', '.join(few)} (calls/round < {MIN_CALLS}): their rates "
                  "move in steps of over 3%; raise --seconds."]
    lines += ["", "Targets (issue 15):"] + targets(rows, cores, large)
    gpu.emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
