"""GPU serving: shoal's workers against in-process eager and TorchScript, side by side.

One command on the GPU machine (after scripts/gpu.sh test, or scripts/build.sh):
    python3 bench/gpu.py [--seconds 2] [--rounds 3] [--workers 1,2,4,8] [--out FILE.md]
(`--device cpu --models tiny` runs the same harness on a machine without a GPU, as a check
of the harness itself; its figures mean nothing.)

For each model (ResNet-50 batch 1 and 8; BERT-base batch 1, sequence 128, randomly
initialised from its config: no download; skipped where torchvision / transformers are
missing), with torch's default precision everywhere (cuDNN may use TF32 for convolutions;
workers run with the defaults, so this process keeps them too; --tf32 off turns it off
here only, which makes the in-process rows slower than the workers'):
  - eager xT: the model in this process, called by T threads (T = 1, 2, 4), one CUDA context;
  - torchscript x1 / xT: its traced TorchScript module in this process;
  - shoal W (python) / shoal W (torchscript): shoald with W workers serving the packaged
    Python model / its TorchScript archive, driven by 2 x W client threads, each with its
    own Client and its input in a GPU arena (c.empty(..., device="cuda")): zero copies.
Throughput (items/s) and per-call p50/p99 are medians over --rounds rounds of --seconds
each; the contenders alternate within each round. GPU memory: nvidia-smi's used memory of
this process (in-process rows) or of the daemon's workers (shoal rows), after the rounds.
Last, the identity round trip: 4 KiB input in a CPU arena vs in a GPU arena (1 worker).
Everything is measured in one invocation; the table is printed (and written to --out).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))
sys.path.insert(0, HERE)

import torch  # noqa: E402

import bench_models  # noqa: E402
import shoal  # noqa: E402
import shoal_test_models  # noqa: E402


def make_models(names, device):
    """[(label, module, example input, extern)]; models whose package is missing are skipped."""
    out = []
    for name in names:
        torch.manual_seed(0)
        if name in ("resnet50", "resnet50b8"):
            try:
                import torchvision
            except ImportError:
                print(f"skipping {name}: torchvision is not installed")
                continue
            batch = 8 if name.endswith("b8") else 1
            out.append((f"ResNet-50 b{batch}", torchvision.models.resnet50().eval(),
                        torch.randn(batch, 3, 224, 224), ()))
        elif name == "bert":
            try:
                m = bench_models.BertEncoder().eval()
            except ImportError:
                print("skipping bert: transformers is not installed")
                continue
            out.append(("BERT-base b1 s128", m, torch.randint(0, 30000, (1, 128)), ("transformers.**",)))
        elif name == "big":
            out.append(bench_models.big_model())
        elif name == "python_bound":
            # bench_models' source names transformers (BertEncoder): torch.package would
            # follow it into the archive where transformers is installed.
            out.append(("python_bound b1", bench_models.PythonBound().eval(), torch.randn(1, 32), ("transformers.**",)))
        elif name == "tiny":
            out.append(("tiny MLP", shoal_test_models.ScriptableMLP().eval(), torch.randn(4, 8), ()))
    return [(label, m.to(device), x.to(device), extern) for label, m, x, extern in out]


def percentile(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def run_threads(loop, n, errors):
    """Runs loop(i) for each i < n in its own thread and waits for them all; then raises the
    first exception the loops put in `errors`."""
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def drive(call_fns, seconds):
    """Runs each fn in its own thread: one warm-up call each, then all of them together for a
    window of `seconds`. Only calls that end inside the window count (a call still running
    at its end keeps the load on and is dropped), so warm-ups and the tail do not bias the
    rate: (calls per second, latencies in ms)."""
    lat = [[] for _ in call_fns]
    errors = []
    window = []
    start_line = threading.Barrier(len(call_fns), action=lambda: window.append(time.perf_counter() + seconds))

    def loop(i):
        fn = call_fns[i]
        try:
            fn()  # warm-up
            start_line.wait()
            stop = window[0]
            while (t0 := time.perf_counter()) < stop:
                fn()
                t1 = time.perf_counter()
                if t1 > stop:
                    break
                lat[i].append((t1 - t0) * 1e3)
        except threading.BrokenBarrierError:
            pass  # another thread failed; its error is reported
        except Exception as e:  # noqa: BLE001
            errors.append(e)
            start_line.abort()
    run_threads(loop, len(call_fns), errors)
    flat = [x for one in lat for x in one]
    return len(flat) / seconds, flat


def _shoal_caller(socket, model, x, device, seconds, barrier, results, timed=False):
    """One caller of drive_processes(), in a process of its own. ``timed``: the model is a
    bench_models.TimedRun, whose second output (rows, ms) each job keeps beside its latency."""
    try:
        with shoal.Client(socket) as c:
            xa = c.empty(tuple(x.shape), x.dtype, device=device)
            xa.copy_(x)
            c.infer(model, xa, timeout=300)  # warm-up: arenas mapped, output arenas made
            barrier.wait(timeout=600)
            stop = time.perf_counter() + seconds
            lat = []
            while (t0 := time.perf_counter()) < stop:
                out = c.infer(model, xa, timeout=300)
                t1 = time.perf_counter()
                if t1 > stop:
                    break
                lat.append((t1 - t0) * 1e3 if not timed else ((t1 - t0) * 1e3, *out[1][0].tolist()))
                del out
        results.put(lat)
    except Exception as e:  # noqa: BLE001
        barrier.abort()
        results.put(f"{type(e).__name__}: {e}")


def drive_processes(socket, model, x, n, seconds, device=None, timed=False):
    """drive() for n shoal callers of `model`, each in its own (spawned) process with its own
    client and its input in that client's arena: callers that are threads of one process
    queue on its GIL, and with fast models they, not shoald, become the bottleneck. The same
    window: each caller counts the calls that end within `seconds` of the common start.
    ``timed`` (a bench_models.TimedRun model): each job's entry is (latency ms, its batch's
    rows, the model's ms in the worker)."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")  # this process may hold a CUDA context
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_shoal_caller, args=(socket, model, x.cpu(), device, seconds, barrier, results, timed),
                         daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=600)  # every caller warm
    except threading.BrokenBarrierError:
        pass  # a caller failed: its error is in results
    flat, errors = [], []
    for _ in procs:
        got = results.get(timeout=seconds + 600)
        (errors.append(got) if isinstance(got, str) else flat.extend(got))
    for p in procs:
        p.join(30)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} caller processes failed; first: {errors[0]}")
    return len(flat) / seconds, flat


def emit(lines, out):
    """Prints the result's lines, and writes them to the file `out` when given."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def gpu_memory_by_pid():
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    mem = {}
    for line in out.strip().splitlines():
        pid, used = (x.strip() for x in line.split(","))
        mem[int(pid)] = int(used)
    return mem


class Daemon:
    """shoald with `workers` workers of `interpreters` interpreters each (`extra`: more
    options; `tag` tells its socket and log apart from other daemons of the same size;
    `timeout_ms`: jobs' default deadline, none unless given)."""

    def __init__(self, workers, tmp, device, interpreters=1, extra=(), tag="", timeout_ms=0):
        name = f"{workers}x{interpreters}{tag}"
        self.socket = os.path.join(tmp, f"shoal-{name}.sock")
        self.log = open(os.path.join(tmp, f"shoald-{name}.log"), "w")
        args = [os.path.join(BUILD, "bin", "shoald"), "--socket", self.socket, "--workers", str(workers),
                "--interpreters", str(interpreters), "--timeout-ms", str(timeout_ms), *extra]
        if device == "cpu":
            args += ["--gpus", "none"]
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180  # K > 1 copies libpython and torch's extensions on a first start
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                with open(self.log.name) as f:
                    tail = f.read()[-1500:]
                raise RuntimeError(f"shoald {' '.join(args[1:])} exited ({self.proc.returncode}) at start: {tail}")
            try:
                shoal.Client(self.socket).close()
                return
            except shoal.Error:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"shoald with {workers} workers x {interpreters} interpreters did not come up")

    def worker_pids(self):
        with shoal.Client(self.socket) as c:
            return [w["pid"] for w in c.status()["workers"]]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            print(f"shoald (pid {self.proc.pid}) still running 30 s after SIGTERM; killing it", flush=True)
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def bench_model(label, module, x, extern, daemons, args, dev, tmp, workers, thread_counts, rows):
    """Runs every contender on one model; appends its rows."""
    key = label.split()[0].lower().replace("-", "") + str(abs(hash(label)) % 1000)
    with torch.no_grad():
        scripted = torch.jit.trace(module, x, check_trace=False)
    py_path = shoal.export(module, os.path.join(tmp, f"{key}.pt"), extern=extern)
    ts_path = os.path.join(tmp, f"{key}_ts.pt")
    torch.jit.save(scripted, ts_path)
    clients = {}
    for w, d in daemons.items():
        with shoal.Client(d.socket) as c:
            c.load(f"{key}_py", py_path)
            c.load(f"{key}_ts", ts_path)
        clients[w] = [shoal.Client(d.socket) for _ in range(2 * w)]

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def eager_fn(m):
        def fn():
            m(x)
            sync()
        return fn

    contenders = {}
    for t in thread_counts:
        contenders[f"eager x{t}"] = [eager_fn(module) for _ in range(t)]
    for t in thread_counts:
        contenders[f"torchscript x{t}"] = [eager_fn(scripted) for _ in range(t)]
    for w in workers:
        for engine in ("py", "ts"):
            fns = []
            for c in clients[w]:
                xa = c.empty(x.shape, x.dtype, device=dev)
                xa.copy_(x)

                def fn(c=c, xa=xa, name=f"{key}_{engine}"):
                    c.infer(name, xa)
                fns.append(fn)
            contenders[f"shoal {w} ({'python' if engine == 'py' else 'torchscript'})"] = fns
    results = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fns in contenders.items():
            results[name].append(drive(fns, args.seconds))
    mem = gpu_memory_by_pid()
    for name, runs in results.items():
        rate = statistics.median(r[0] for r in runs) * x.shape[0]
        lat = [v for r in runs for v in r[1]]
        if name.startswith("shoal"):
            w = int(name.split()[1])
            used = sum(mem.get(pid, 0) for pid in daemons[w].worker_pids())
        else:
            used = mem.get(os.getpid(), 0)
        rows.append((label, name, rate, percentile(lat, 0.5), percentile(lat, 0.99), used))
        print(f"| {label} | {name} | {rows[-1][2]:.1f} | {rows[-1][3]:.2f} | {rows[-1][4]:.2f} | {used} |",
              flush=True)
    for cs in clients.values():
        for c in cs:
            c.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default="1,2,4,8")
    p.add_argument("--threads", default="1,2,4")
    p.add_argument("--models", default="resnet50,resnet50b8,bert")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tf32", choices=("default", "off"), default="default")
    p.add_argument("--out")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py needs a GPU (or --device cpu to check the harness)")
        return 0
    if args.tf32 == "off":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    print(f"TF32 here: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32}")
    torch.set_grad_enabled(False)
    dev = args.device
    workers = [int(w) for w in args.workers.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    tmp = tempfile.mkdtemp(prefix="shoal-gpu-bench-")
    models = make_models(args.models.split(","), dev)
    daemons = {w: Daemon(w, tmp, dev) for w in workers}
    rows = []
    try:
        for label, module, x, extern in models:
            try:
                bench_model(label, module, x, extern, daemons, args, dev, tmp, workers, thread_counts, rows)
            except Exception as e:  # noqa: BLE001 - one model's failure must not lose the others' figures
                print(f"{label}: failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
        # Identity round trip, 4 KiB input: CPU arena vs GPU arena.
        d = daemons[workers[0]]
        ident = shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt"))
        rt = []
        with shoal.Client(d.socket) as c:
            c.load("identity", ident)
            for where in ("cpu", dev):
                xa = c.empty((1024,), device=where)
                xa.fill_(1)
                for _ in range(200):
                    c.infer("identity", xa)
                us = []
                for _ in range(2000):
                    t0 = time.perf_counter()
                    c.infer("identity", xa)
                    us.append((time.perf_counter() - t0) * 1e6)
                rt.append((where, percentile(us, 0.5), percentile(us, 0.99)))
    finally:
        for d in daemons.values():
            d.stop()
    lines = ["| model | contender | items/s | p50 (ms) | p99 (ms) | GPU memory (MiB) |", "|---|---|---|---|---|---|"]
    for label, name, rate, p50, p99, used in rows:
        lines.append(f"| {label} | {name} | {rate:.1f} | {p50:.2f} | {p99:.2f} | {used} |")
    lines += ["", "| identity round trip, 4 KiB input | p50 (us) | p99 (us) |", "|---|---|---|"]
    for where, p50, p99 in rt:
        lines.append(f"| input in a {where.upper()} arena | {p50:.1f} | {p99:.1f} |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
