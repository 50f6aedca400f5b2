"""Round trip of a job through shoald vs calling the model in-process.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/roundtrip.py [--runs 5] [--iters 2000] [--spin-us 0,50] [--torchscript]

Starts shoald (1 worker) on a temporary socket, packages an identity model, and measures
p50/p99 per call, for arena-backed inputs of 4 KiB and 64 MiB:
  - in-process: the unpackaged model called directly in this Python process (baseline);
  - shoal, Python client (shoal.Client.infer);
  - shoal, C++ client (build/bin/bench_roundtrip);
  - the floor of this machine: one socketpair ping-pong between two processes
    (a shoal job needs two such hops: client -> shoald -> worker and back).
Each figure is the median over --runs runs; all measured in the same invocation.
--spin-us: a shoald per value, started with SHOAL_SPIN_US (protocol/spin.h: shoald, its
worker and both clients poll that long for the next message before they sleep), the
variants' runs alternating. "S/C": shoald and its worker poll S us, the clients C;
"auto": shoald's default (spin_us = auto: it chooses by the CPUs it has), clients not
polling, as a user's would by default.
--torchscript: the same identity as a TorchScript module too, which the worker runs in C++
(worker/torchscript.h) without its Python: rows marked "TorchScript model" show what the
job path costs without the worker's Python (the lower bound of the Python model's rows);
the two models take turns going first, run by run.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("SHOAL_BUILD_DIR", os.path.join(HERE, "..", "build"))
sys.path.insert(0, os.path.join(BUILD, "python"))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "models"))

import torch  # noqa: E402

import shoal  # noqa: E402
from shoal import _native  # noqa: E402
import shoal_test_models  # noqa: E402


def percentiles(samples):
    s = sorted(samples)
    return s[len(s) // 2], s[len(s) * 99 // 100]


def time_calls(fn, iters):
    for _ in range(iters // 10):
        fn()
    us = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        us.append((time.perf_counter() - t0) * 1e6)
    return percentiles(us)


def pingpong(iters):
    a, b = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        a.close()
        while True:
            d = b.recv(64)
            if not d:
                os._exit(0)
            b.send(d)
    b.close()
    r = time_calls(lambda: (a.send(b"x"), a.recv(64)), iters)
    a.close()
    os.waitpid(pid, 0)
    return r


def parse_spin(spec):
    """"50" -> (50, 50); "50/0" -> (50, 0); "auto" -> (None, 0): (shoald's, the clients')."""
    if spec == "auto":
        return None, 0
    server, _, client = spec.partition("/")
    return int(server), int(client or server)


class ScriptedIdentity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def start_daemon(tmp, archives, spin_us):
    """shoald with one worker serving `archives` ({model name: path}), polling `spin_us` before it
    and its worker sleep (protocol/spin.h; None: shoald's own choice, spin_us = auto);
    returns (process, socket path, client)."""
    tag = "auto" if spin_us is None else spin_us
    sock = os.path.join(tmp, f"shoal-{tag}.sock")
    log = open(os.path.join(tmp, f"shoald-{tag}.log"), "w")
    env = dict(os.environ)
    env.pop("SHOAL_SPIN_US", None)
    if spin_us is not None:
        env["SHOAL_SPIN_US"] = str(spin_us)
    models = [arg for name, path in archives.items() for arg in ("--model", f"{name}={path}")]
    daemon = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers", "1", *models],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    for _ in range(300):
        try:
            c = shoal.Client(sock, arena_size=512 << 20)
            if all(m["ready"] for m in c.models()) and len(c.models()) == len(archives):
                return daemon, sock, c
        except shoal.Error:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"shoald (spin {spin_us} us) did not get ready: see {log.name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--spin-us", default="0",
                    help="comma-separated SHOAL_SPIN_US values, each a shoald of its own, runs alternating "
                         "(0: receivers sleep at once, the default); S/C: shoald S, clients C; auto: shoald's "
                         "own choice, clients 0")
    ap.add_argument("--torchscript", action="store_true",
                    help="also the identity as a TorchScript module (run by the worker in C++, no Python)")
    args = ap.parse_args()
    spins = args.spin_us.split(",")
    tmp = tempfile.mkdtemp(prefix="shoal-bench-")
    model = shoal_test_models.Identity()
    archives = {"identity": shoal.export(model, os.path.join(tmp, "identity.pt"))}
    if args.torchscript:
        archives["identity_ts"] = os.path.join(tmp, "identity_ts.pt")
        torch.jit.save(torch.jit.script(ScriptedIdentity()), archives["identity_ts"])
    daemons = {}
    rows = []
    try:
        for spin in spins:
            daemons[spin] = start_daemon(tmp, archives, parse_spin(spin)[0])
        # Both sizes, every daemon, in each run, in turn: whichever is measured first after the
        # daemons start runs on colder caches and clocks (it was always 4 KiB, up to 1.3x slower).
        sizes = (("4 KiB", 4096), ("64 MiB", 64 << 20))
        xs, results = {}, {}
        for label, nbytes in sizes:
            for spin, (_, _, c) in daemons.items():
                xs[label, spin] = c.empty((nbytes // 4,))
                xs[label, spin].fill_(1.0)
            results[label] = {"in-process": []}
            for spin in spins:
                for name in archives:
                    results[label][("py", spin, name)] = []
                    results[label][("cpp", spin, name)] = []
        for r in range(args.runs):
            for label, nbytes in (sizes if r % 2 == 0 else sizes[::-1]):
                x = xs[label, spins[0]]
                with torch.inference_mode():
                    results[label]["in-process"].append(time_calls(lambda: model(x), args.iters))
                for spin, (_, sock, c) in daemons.items():
                    client_spin = parse_spin(spin)[1]
                    _native.set_spin_budget_us(client_spin)  # the Python client's own polling, as its env would set
                    for name in (list(archives) if r % 2 == 0 else list(archives)[::-1]):
                        results[label][("py", spin, name)].append(
                            time_calls(lambda: c.infer(name, xs[label, spin]), args.iters))
                        out = subprocess.run([os.path.join(BUILD, "bin", "bench_roundtrip"), sock, name,
                                              str(nbytes), str(args.iters)], capture_output=True, text=True,
                                             check=True, env=dict(os.environ, SHOAL_SPIN_US=str(client_spin)))
                        p50, p99 = map(float, out.stdout.split())
                        results[label][("cpp", spin, name)].append((p50, p99))
        for label, _ in sizes:
            for key, runs in results[label].items():
                if key == "in-process":
                    name = key
                else:
                    client, spin, model_name = key
                    server_spin, client_spin = parse_spin(spin)
                    if server_spin is None:
                        tag = f", spin auto, clients {client_spin} us"
                    elif server_spin != client_spin:
                        tag = f", spin {server_spin} us, clients {client_spin} us"
                    else:
                        tag = f", spin {server_spin} us" if len(spins) > 1 or server_spin else ""
                    engine = ", TorchScript model" if model_name == "identity_ts" else ""
                    name = f"shoal ({'Python' if client == 'py' else 'C++'} client{tag}{engine})"
                rows.append((label, name, statistics.median(r[0] for r in runs),
                             statistics.median(r[1] for r in runs)))
        floor = [pingpong(args.iters) for _ in range(args.runs)]
        rows.append(("1 byte", "socketpair ping-pong (machine floor, 1 hop)",
                     statistics.median(r[0] for r in floor), statistics.median(r[1] for r in floor)))
    finally:
        for daemon, _, _ in daemons.values():
            daemon.terminate()
            daemon.wait()
    print(f"runs={args.runs} iters={args.iters} cpus={os.cpu_count()} torch={torch.__version__}")
    print("| input | path | p50 (us) | p99 (us) |")
    print("|---|---|---|---|")
    for label, name, p50, p99 in rows:
        print(f"| {label} | {name} | {p50:.1f} | {p99:.1f} |")


if __name__ == "__main__":
    main()
