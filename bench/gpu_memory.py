"""GPU memory of shoal's workers against the in-process design (issue 14, "Memory comparison").

One command on the GPU machine (after scripts/gpu.sh test, which builds build-gpu):
    scripts/gpu.sh run python3 bench/gpu_memory.py \\
        [--slots 1,2,4,8] [--models resnet50,bert,big] [--out FILE.md]
(`--device cpu --models tiny` checks the harness on a machine without a GPU: only (c), on
the CPU, and (d) run; their figures mean nothing.)

Models, random weights (no download): ResNet-50 b1; BERT-base b1 s128 and "big" (GPT-2-XL's
width and heads, 32 layers: ~4 GiB of fp32 weights; a stack of Linear layers of the same
size where transformers is missing). For each model and each N in --slots, one contender
after the other, each started only once nvidia-smi shows the memory of the one before back:
  (a) shoald --workers N --gpus 0, GPU weights shared: one copy on the GPU, mapped by every worker;
  (b) the same with a copy per worker (what Triton and TorchServe do);
  (c) the in-process design: one process holding the model once on cuda:0, N threads;
  (d) shoald --workers N --gpus none: the model on the CPU, its weights mapped from the archive.
Each first runs inferences: N concurrent callers, one job each, 3 rounds started together (for
shoal, N clients with their inputs in GPU arenas, in a separate process that has exited
before the reading), so activations, torch's cached blocks and cuDNN workspaces exist.
GPU memory: nvidia-smi's used memory of GPU 0 minus its figure just before the contender
started. Host memory: the Pss (/proc/PID/smaps_rollup) of shoald + zygote + workers, or of
the in-process contender's process. Targets, computed (not asserted): (a) <= 1.1 x (c) +
(N - 1) x one bare CUDA context (measured once: a process that only does
torch.zeros(1, device="cuda")); for the big model at N = 8, (a) <= 0.4 x (b).
"""
import argparse
import contextlib
import functools
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from gpu import BUILD, Daemon, gpu_memory_by_pid, make_models, run_threads  # also puts the build's python/ on sys.path

import torch  # noqa: E402
import shoal  # noqa: E402
from bench_models import pss_kb  # noqa: E402

ROUNDS = 3
WAIT_S = 600  # the longest any one step (a load, the inferences, a process's start) may take
SETTLE_S = 120  # how long memory may take to come back after a contender stopped
SLACK_MIB = 64  # GPU memory above the idle figure still counted as "back"
MIB = 1 << 20


def device_used_mib():
    """nvidia-smi's used memory of GPU 0, MiB (every process's, the driver's own included)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
        return int(out.strip())
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"nvidia-smi cannot read GPU 0's used memory: {e}") from None


def settle(idle):
    """Waits until GPU 0 is back within SLACK_MIB of `idle`; returns its used memory now."""
    deadline = time.time() + SETTLE_S
    while (used := device_used_mib()) > idle + SLACK_MIB and time.time() < deadline:
        time.sleep(0.5)
    if used > idle + SLACK_MIB:
        print(f"warning: GPU 0 still uses {used} MiB, {used - idle} over its idle figure, {SETTLE_S} s after "
              "the last contender stopped; the next figure is taken over that", flush=True)
    return used


def run_together(n, fn):
    """Calls fn(i) from n threads at once, ROUNDS times (a barrier starts every round)."""
    barrier = threading.Barrier(n)
    errors = []

    def loop(i):
        try:
            for _ in range(ROUNDS):
                barrier.wait(WAIT_S)
                fn(i)
        except Exception as e:  # noqa: BLE001 - re-raised below, in the caller's thread
            errors.append(e)
            barrier.abort()
    run_threads(loop, n, errors)


def child(args):
    """The processes measured alone (--role): `context` (a bare CUDA context), `inprocess`
    (the model once, N threads) and `drive` (N shoal clients, their inputs in arenas on
    --device). All but `drive` print READY once done and hold everything until stdin closes."""
    dev = args.device
    if args.role == "context":
        torch.zeros(1, device="cuda")
    else:
        x = torch.load(args.input).to(dev)
        if args.role == "inprocess":
            m = shoal.archive.load_with_manifest(args.archive, device=dev)[0]

            def call(i):
                with torch.no_grad():  # grad mode is per thread
                    m(x)
        else:
            clients = [shoal.Client(args.socket) for _ in range(args.n)]
            inputs = [c.empty(x.shape, x.dtype, device=dev) for c in clients]
            for xa in inputs:
                xa.copy_(x)

            def call(i):
                clients[i].infer(args.name, inputs[i], timeout=WAIT_S)
        run_together(args.n, call)
    if dev == "cuda":
        torch.cuda.synchronize()
    if args.role == "drive":
        for c in clients:
            c.close()
        return 0
    print("READY", flush=True)
    sys.stdin.readline()
    return 0


def spawn(role, **kw):
    cmd = [sys.executable, os.path.abspath(__file__), "--role", role]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    # Held roles print READY on stdout, unbuffered here so that select() sees every line not
    # yet read, and wait for stdin to close; `drive` just exits. Errors go to stderr.
    pipe = subprocess.DEVNULL if role == "drive" else subprocess.PIPE
    return subprocess.Popen(cmd, stdin=pipe, stdout=None if role == "drive" else pipe, bufsize=0)


@contextlib.contextmanager
def held(role, **kw):
    """A `role` child (see child()) that has printed READY; it exits when the block ends."""
    p = spawn(role, **kw)
    try:
        deadline = time.time() + WAIT_S
        while True:
            ready = select.select([p.stdout], [], [], max(0.0, deadline - time.time()))[0]
            if not ready:
                raise RuntimeError(f"the {role} process is not ready after {WAIT_S} s")
            line = p.stdout.readline()
            if line.strip() == b"READY":
                break
            if not line:
                raise RuntimeError(f"the {role} process exited with status {p.wait(30)} before it was ready "
                                   "(its error is above)")
            print(line.decode(errors="replace"), end="")
        yield p
    finally:
        p.stdin.close()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_ready(c, model, n):
    """Until `model` is loaded in n workers that are not restarting (like tests' wait_ready)."""
    deadline = time.time() + WAIT_S
    while sum(model in w["models"] and w["state"] != "restarting" for w in c.status()["workers"]) < n:
        if time.time() > deadline:
            raise TimeoutError(f"model {model} is not ready in {n} workers after {WAIT_S} s")
        time.sleep(0.1)


def weights_option(mode):
    """shoald's options for GPU weights `mode` ("shared" or "per_worker"); None if this
    build cannot choose (it predates shared GPU weights)."""
    usage = subprocess.run([os.path.join(BUILD, "bin", "shoald"), "--help"], capture_output=True, text=True,
                           timeout=60).stdout
    if re.search(r"^\s*--gpu-weights\b", usage, re.M):
        return ["--gpu-weights", mode]
    if re.search(r"^\s*--share-gpu-weights\b", usage, re.M):
        return ["--share-gpu-weights", "yes" if mode == "shared" else "no"]
    return None


def measure_shoal(tmp, tag, archive, x_path, n, dev, extra, idle):
    """{gpu, pss (bytes), procs, gpus} of shoald with n workers serving `archive` on `dev`
    (its log: tmp/shoald-{n}-{tag}.log)."""
    base = settle(idle) if dev == "cuda" else 0
    d = Daemon(n, tmp, dev, extra=extra, tag=f"-{tag}")
    try:
        with shoal.Client(d.socket) as c:
            c.load("m", archive, device=dev)
            wait_ready(c, "m", n)
        drive = spawn("drive", socket=d.socket, name="m", n=n, input=x_path, device=dev)
        try:
            rc = drive.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            drive.kill()
            drive.wait()
            raise RuntimeError(f"the callers' process did not finish in {WAIT_S} s") from None
        if rc:
            raise RuntimeError(f"the callers' process failed (exit status {rc}; its error is above)")
        with shoal.Client(d.socket) as c:
            st = c.status()
        if st.get("jobs_done", n * ROUNDS) < n * ROUNDS:
            raise RuntimeError(f"shoald counts {st['jobs_done']} jobs done of the {n * ROUNDS} sent")
        roles = {d.proc.pid: "shoald", st.get("zygote", 0): "zygote"}
        roles.update((w["pid"], "worker") for w in st["workers"])
        pss = pss_kb(d.proc.pid) + pss_kb(st.get("zygote", 0))
        pss += sum(pss_kb(w["pid"]) or w.get("pss_kb", 0) for w in st["workers"])  # status: if /proc is closed
        r = {"pss": pss * 1024}
        if dev == "cuda":
            deadline = time.time() + SETTLE_S
            while drive.pid in (per := gpu_memory_by_pid()) and time.time() < deadline:
                time.sleep(0.2)
            r["gpu"] = (device_used_mib() - base) * MIB
            r["procs"] = {f"{roles.get(pid, 'other')} {pid}": mib for pid, mib in per.items()}
            r["gpus"] = st.get("gpus", "(status has no 'gpus')")
        return r
    finally:
        d.stop()


def measure_inprocess(archive, x_path, n, dev, idle):
    """{gpu, pss} of one process holding the model once on `dev`, after N threads' inferences."""
    base = settle(idle) if dev == "cuda" else 0
    with held("inprocess", archive=archive, input=x_path, n=n, device=dev) as p:
        r = {"pss": pss_kb(p.pid) * 1024}
        if dev == "cuda":
            r["gpu"] = (device_used_mib() - base) * MIB
            r["procs"] = {f"{'in-process' if pid == p.pid else 'other'} {pid}": mib
                          for pid, mib in gpu_memory_by_pid().items()}
    return r


def measure_context(idle):
    """GPU memory of a process whose only CUDA work is torch.zeros(1, device="cuda")."""
    base = settle(idle)
    with held("context", n=1, device="cuda"):
        return (device_used_mib() - base) * MIB


def gib(v):
    return "-" if v is None else f"{v / (1 << 30):.2f}"


def table(rows, ctx):
    """The report: GPU memory with targets, host Pss, and each row's details."""
    def get(row, key, what):
        return row.get(key, {}).get(what)
    out = ["| model | N | (a) shared GiB | (b) per worker GiB | (c) in-process GiB | target for (a) GiB "
           "| (a)/(b) | (d) CPU serving, host Pss GiB |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b, c = get(r, "a", "gpu"), get(r, "b", "gpu"), get(r, "c", "gpu")
        target = ratio = "-"
        if c is not None and ctx is not None:
            t = 1.1 * c + (r["n"] - 1) * ctx
            target = f"{gib(t)}" + ("" if a is None else f" ({'met' if a <= t else 'missed'})")
        if a is not None and b:
            ratio = f"{a / b:.2f}"
            if r["name"] == "big" and r["n"] == 8:
                ratio += f" (target 0.40: {'met' if a <= 0.4 * b else 'missed'})"
        out.append(f"| {r['label']} | {r['n']} | {gib(a)} | {gib(b)} | {gib(c)} | {target} | {ratio} "
                   f"| {gib(get(r, 'd', 'pss'))} |")
    out += ["", "| model | N | (a) host Pss GiB | (b) host Pss GiB | (c) host Pss GiB | (d) host Pss GiB |",
            "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['n']} | " + " | ".join(gib(get(r, k, "pss")) for k in "abcd") + " |")
    details = [f"- {r['label']} N={r['n']} ({k}): GPU memory by process (MiB) {r[k]['procs']}"
               + (f"; status gpus {json.dumps(r[k]['gpus'], default=str)}" if "gpus" in r[k] else "")
               for r in rows for k in "abc" if "procs" in r.get(k, {})]
    return "\n".join(out + ([""] + details if details else []))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slots", default="1,2,4,8")
    p.add_argument("--models", default="resnet50,bert,big")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--out")
    for hidden in ("role", "archive", "input", "socket", "name"):  # child processes' (child())
        p.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.role:
        return child(args)
    dev = args.device
    # This process never touches CUDA: every GPU figure is of processes it started.
    if dev == "cuda" and shutil.which("nvidia-smi") is None:
        print("bench/gpu_memory.py needs nvidia-smi and a GPU (or --device cpu to check the harness)")
        return 0
    t_start = time.time()
    slots = [int(n) for n in args.slots.split(",")]
    tmp = tempfile.mkdtemp(prefix="shoal-gpu-memory-")
    rows, failures, ctx, idle = [], 0, None, 0
    try:
        if dev == "cuda":
            idle = device_used_mib()
            ctx = measure_context(idle)
            print(f"GPU 0: {idle} MiB used before the run; one bare CUDA context: {ctx / MIB:.0f} MiB", flush=True)
        options = {mode: weights_option(mode) for mode in ("shared", "per_worker")}
        for name in args.models.split(","):
            made = make_models([name], "cpu")
            if not made:
                print(f"{name}: skipped (a missing package, said above, or no such model)")
                continue
            label, module, x, extern = made[0]
            archive = shoal.export(module, os.path.join(tmp, f"{name}.pt"), extern=extern)
            del made, module  # the big model's 4 GiB
            x_path = os.path.join(tmp, f"{name}-input.pt")
            torch.save(x, x_path)
            for n in slots:
                runs = {"c": functools.partial(measure_inprocess, archive, x_path, n, dev, idle),
                        "d": functools.partial(measure_shoal, tmp, f"{name}-d", archive, x_path, n, "cpu", [], idle)}
                for key, mode in (("a", "shared"), ("b", "per_worker")):
                    if dev == "cuda" and options[mode] is None:
                        print(f"({key}) skipped: {BUILD}/bin/shoald has no option for GPU weights {mode}")
                    elif dev == "cuda":
                        extra = ["--gpus", "0", *options[mode]]
                        runs[key] = functools.partial(measure_shoal, tmp, f"{name}-{key}", archive, x_path, n, dev,
                                                      extra, idle)
                row = {"name": name, "label": label, "n": n}
                for key in sorted(runs):
                    t0 = time.time()
                    try:
                        row[key] = runs[key]()
                    except Exception as e:  # noqa: BLE001 - one contender's failure must not lose the others'
                        failures += 1
                        print(f"{label} N={n} ({key}): failed: {type(e).__name__}: {str(e)[:2000]}", flush=True)
                        continue
                    print(f"{label} N={n} ({key}): GPU {gib(row[key].get('gpu'))} GiB, host Pss "
                          f"{gib(row[key]['pss'])} GiB ({time.time() - t0:.0f} s)", flush=True)
                rows.append(row)
            os.unlink(archive)
    finally:
        for f in os.listdir(tmp):
            if f.endswith(".pt"):
                os.unlink(os.path.join(tmp, f))
        if failures:
            print(f"shoald logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    text = table(rows, ctx)
    if ctx is not None:
        text = f"One bare CUDA context: {ctx / MIB:.0f} MiB; GPU 0 used {idle} MiB before the run.\n\n{text}"
    print(text)
    print(f"({time.time() - t_start:.0f} s in all)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
