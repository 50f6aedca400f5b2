"""What the KServe v2 front (shoal-http, http_address) costs against shoal's own socket.

One command (after scripts/build.sh):
    /usr/bin/python3 bench/kserve_http.py [--runs 5] [--jobs 500] [--workers 1]

Starts shoald with the identity model and http_address on a free loopback port, then times
one caller doing one job at a time, for a 4 KiB and a 4 MiB FP32 input:
  - socket: the Python client (shoal.Client.infer) with an arena-backed input;
  - HTTP binary: POST /v2/models/identity/infer with the binary tensor data extension, one
    kept-alive connection (http.client), the output asked for as binary data;
  - HTTP JSON: the same with JSON "data" both ways (4 KiB only: JSON numbers).
Reports jobs/s and the p50 latency, the median over --runs runs, the contenders
alternating within each run.
"""
import argparse
import collections
import http.client
import json
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import shoal  # noqa: E402
import shoal_test_models  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp, archive, workers, port):
    sock = os.path.join(tmp, "shoal.sock")
    log = open(os.path.join(tmp, "shoald.log"), "w")
    daemon = subprocess.Popen([os.path.join(BUILD, "bin", "shoald"), "--socket", sock, "--workers", str(workers),
                               "--model", f"identity={archive}", "--http-address", f"127.0.0.1:{port}"],
                              stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/v2/health/ready")
            if conn.getresponse().status == 200:
                conn.close()
                return daemon, sock
        except OSError:
            pass
        time.sleep(0.1)
    daemon.kill()
    raise RuntimeError("shoald did not come up")


def timed(one, jobs):
    for _ in range(max(1, jobs // 10)):  # warm-up
        one()
    lat = []
    t0 = time.perf_counter()
    for _ in range(jobs):
        s = time.perf_counter()
        one()
        lat.append(time.perf_counter() - s)
    return jobs / (time.perf_counter() - t0), statistics.median(lat) * 1e6


def http_call(conn, body, headers):
    conn.request("POST", "/v2/models/identity/infer", body=body, headers=headers)
    r = conn.getresponse()
    out = r.read()
    if r.status != 200:
        raise RuntimeError(out[:300])
    return r, out


def binary_request(x):
    header = json.dumps({"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def json_request(x):
    return json.dumps({"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.tolist()}]}).encode(), {"Content-Type": "application/json"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="shoal-bench-http-")
    archive = shoal.export(shoal_test_models.Identity(), os.path.join(tmp, "identity.pt"))
    port = free_port()
    daemon, sock = start(tmp, archive, args.workers, port)
    results = collections.defaultdict(list)
    try:
        c = shoal.Client(sock)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(args.runs):  # the contenders alternate within each run
            for nbytes in (4096, 4 << 20):
                n = nbytes // 4
                jobs = args.jobs if nbytes == 4096 else max(20, args.jobs // 10)
                x = c.empty((n,))
                x.fill_(1.0)
                results[("socket", nbytes)].append(timed(lambda: c.infer("identity", x), jobs))
                host = np.ones(n, dtype=np.float32)
                body, headers = binary_request(host)
                results[("HTTP binary", nbytes)].append(timed(lambda: http_call(conn, body, headers), jobs))
                if nbytes == 4096:
                    body_j, headers_j = json_request(host)
                    results[("HTTP JSON", nbytes)].append(timed(lambda: http_call(conn, body_j, headers_j), jobs))
        conn.close()
        c.close()
    finally:
        daemon.terminate()
        daemon.wait()
    print(f"runs={args.runs} jobs={args.jobs} workers={args.workers} cpus={os.cpu_count()} torch={torch.__version__}")
    print("| input | contender | jobs/s | p50 (us) | jobs/s vs socket |")
    print("|---|---|---|---|---|")
    for nbytes in (4096, 4 << 20):
        base = statistics.median(r[0] for r in results[("socket", nbytes)])
        for who in ("socket", "HTTP binary", "HTTP JSON"):
            rs = results.get((who, nbytes))
            if not rs:
                continue
            rate, p50 = statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)
            size = "4 KiB" if nbytes == 4096 else "4 MiB"
            print(f"| {size} | {who} | {rate:.0f} | {p50:.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
