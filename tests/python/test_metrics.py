"""Prometheus metrics (metrics_address): a real shoald serves /metrics over HTTP on a Unix
socket and on TCP loopback; after known traffic the counters say exactly what happened;
other paths and methods are refused; a client that opens connections and sends nothing
keeps neither scrapes nor jobs from being served; and a real Prometheus server scrapes it
and answers PromQL with the same counts."""
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import torch

import shoal


from httpc import connect, free_port, request  # noqa: E402


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')


def parse_labels(text):
    """{name: value} from 'a="x",b="y\\"z"', undoing the format's escapes."""
    labels, i = {}, 0
    while i < len(text):
        m = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="').match(text, i)
        assert m, f"bad labels at {text[i:]!r}"
        i = m.end()
        value = []
        while text[i] != '"':
            if text[i] == "\\":
                value.append({"\\": "\\", '"': '"', "n": "\n"}[text[i + 1]])
                i += 2
            else:
                value.append(text[i])
                i += 1
        labels[m.group(1)] = "".join(value)
        i += 1
        if i < len(text):
            assert text[i] == ",", text
            i += 1
    return labels


def parse(text):
    """The page as {(name, frozenset(labels)): value}, checking the format on the way: each
    family once, HELP then TYPE before its samples, its samples together, histograms whole."""
    assert text.endswith("\n")
    samples, types, family = {}, {}, None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            family = line.split(" ")[2]
            assert family not in types, f"family {family} twice"
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name == family, f"TYPE of {name} without its HELP"
            assert kind in ("counter", "gauge", "histogram")
            types[name] = kind
            continue
        m = SAMPLE.match(line)
        assert m, f"not a sample: {line!r}"
        name, labels, value = m.group(1), parse_labels(m.group(2) or ""), float(m.group(3))
        base = re.sub(r"_(bucket|sum|count)$", "", name) if types.get(family) == "histogram" else name
        assert base == family, f"{name} outside its family ({family})"
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"{line!r} twice"
        samples[key] = value
    for (name, labels), count in samples.items():
        if not name.endswith("_count") or types.get(name[:-6]) != "histogram":
            continue
        base = name[:-6]
        buckets = sorted(((float(dict(k[1])["le"]), v) for k, v in samples.items()
                          if k[0] == base + "_bucket" and k[1] - {("le", dict(k[1])["le"])} == labels),
                         key=lambda b: b[0])
        assert buckets[-1] == (float("inf"), count), f"{base}: +Inf bucket is not the count"
        assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), f"{base}: buckets not cumulative"
        assert (base + "_sum", labels) in samples
    return samples, types


def scrape(address):
    status, headers, body = request(address)
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(body.decode())[0]


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def series(samples, name):
    return {k[1]: v for k, v in samples.items() if k[0] == name}


def metrics_daemon(make_daemon, tmp_path, kind, args=()):
    address = str(tmp_path / "metrics.sock") if kind == "unix" else f"127.0.0.1:{free_port()}"
    d = make_daemon(workers=1, args=["--metrics-address", address, *args])
    return d, address


N_OK, M_ERRORS = 5, 3


def traffic(c, archives):
    """N_OK answers, M_ERRORS model errors, one request for a model that does not exist."""
    c.load("add", archives["add"])
    c.load("raises", archives["raises"])
    for i in range(N_OK):
        assert torch.equal(c.infer("add", torch.full((4,), float(i))), torch.full((4,), 2 * i + 1.0))  # x * 2 + 1
    for _ in range(M_ERRORS):
        with pytest.raises(shoal.ModelError):
            c.infer("raises", torch.zeros(2))
    with pytest.raises(shoal.ModelNotFound):
        c.infer("nope", torch.zeros(1))


# ---- the page ----

@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_counters_say_exactly_what_happened(make_daemon, tmp_path, archives, kind):
    d, address = metrics_daemon(make_daemon, tmp_path, kind)
    with d.client() as c:
        traffic(c, archives)
        s = scrape(address)
        requests = series(s, "shoal_requests_total")
        assert requests == {
            frozenset({("model", "add"), ("code", "OK")}): N_OK,
            frozenset({("model", "raises"), ("code", "MODEL_ERROR")}): M_ERRORS,
            frozenset({("model", ""), ("code", "MODEL_NOT_FOUND")}): 1,
        }
        # Every job that reached a worker waited and ran once; the refused one did neither.
        for model, n in (("add", N_OK), ("raises", M_ERRORS)):
            assert value(s, "shoal_queue_duration_seconds_count", model=model) == n
            assert value(s, "shoal_compute_duration_seconds_count", model=model) == n
            assert value(s, "shoal_compute_duration_seconds_sum", model=model) > 0
            assert value(s, "shoal_jobs_queued", model=model) == 0
            assert value(s, "shoal_jobs_running", model=model) == 0
        assert value(s, "shoal_queue_duration_seconds_count", model="") is None
        assert value(s, "shoal_worker_restarts_total") == 0
        assert value(s, "shoal_client_connections") == 1
        assert value(s, "shoal_client_arena_bytes", memory="host") > 0  # this client's input arena
        assert value(s, "shoal_client_arena_bytes", memory="gpu") == 0
        # Worker figures are those `status` shows (the memory limit; Pss once sampled).
        worker = c.status()["workers"][0]
        assert int(value(s, "shoal_worker_memory_limit_bytes", worker="0")) >> 20 == worker["memory_limit_mb"] > 0
        assert value(s, "shoal_worker_output_arena_bytes", worker="0") is not None
        deadline = time.time() + 30
        while c.status()["workers"][0]["pss_kb"] == 0 and time.time() < deadline:
            time.sleep(0.1)
        assert value(scrape(address), "shoal_worker_pss_bytes", worker="0") > 0
    # The client hung up: its arena and connection are gone from the page too.
    deadline = time.time() + 10
    while value(s := scrape(address), "shoal_client_connections") != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert value(s, "shoal_client_connections") == 0
    assert value(s, "shoal_client_arena_bytes", memory="host") == 0


def test_crashes_and_crash_loops_are_counted(make_daemon, tmp_path, archives):
    d, address = metrics_daemon(make_daemon, tmp_path, "tcp", args=["--crash-loop-limit", "1"])
    with d.client() as c:
        c.load("crashy", archives["crashy"])
        with pytest.raises(shoal.WorkerCrashed):
            c.infer("crashy", -torch.ones(1))
        with pytest.raises(shoal.Unavailable, match="refuses jobs from uid"):
            c.infer("crashy", torch.ones(1))
        s = scrape(address)
    assert value(s, "shoal_requests_total", model="crashy", code="WORKER_CRASHED") == 1
    assert value(s, "shoal_requests_total", model="crashy", code="UNAVAILABLE") == 1
    assert value(s, "shoal_worker_restarts_total") == 1
    assert value(s, "shoal_crash_loops_total", model="crashy", verdict="client_refused") == 1
    assert value(s, "shoal_crash_loops_total", model="crashy", verdict="model_failed") == 0


def test_label_values_are_escaped(make_daemon, tmp_path, archives):
    d, address = metrics_daemon(make_daemon, tmp_path, "unix")
    name = 'q"uo\\te'  # a model name may hold a double quote and a backslash
    with d.client() as c:
        c.load(name, archives["add"])
        c.infer(name, torch.zeros(1))
    s = scrape(address)
    assert value(s, "shoal_requests_total", model=name, code="OK") == 1
    status, _, body = request(address)
    assert b'model="q\\"uo\\\\te"' in body


def test_other_paths_are_404_other_methods_405_and_connections_stay_alive(make_daemon, tmp_path):
    d, address = metrics_daemon(make_daemon, tmp_path, "tcp")
    status, _, body = request(address, path="/")
    assert status == 404 and b"/metrics only" in body
    assert request(address, path="/metrics/x")[0] == 404
    for method in ("POST", "PUT", "DELETE"):
        status, headers, _ = request(address, method=method, body=b"x=1")
        assert status == 405
        assert headers["Allow"] == "GET, HEAD"
    status, headers, body = request(address, method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert request(address, path="/metrics?name[]=x")[0] == 200
    # One connection, several requests.
    conn = connect(address)
    for _ in range(3):
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        assert r.status == 200 and b"shoal_requests_total" in r.read()
    conn.close()
    # Bounded requests: a header past 8 KiB and a body past 4 KiB are refused.
    assert request(address, headers={"X-Big": "a" * 9000})[0] == 431
    assert request(address, method="POST", body=b"x" * 5000)[0] == 413


def test_a_bad_metrics_address_stops_the_start_saying_why(tmp_path):
    from conftest import BUILD
    for address, said in (("10.0.0.1:9400", "is not a loopback address"),
                          ("localhost:9400", "is not an IP address and port (host names are not resolved)"),
                          ("metrics.sock", "names no port")):
        r = subprocess.run([os.path.join(BUILD, "bin", "shoald"), "--socket", str(tmp_path / "s.sock"),
                            "--metrics-address", address], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, r.stderr
        assert f"--metrics-address '{address}' {said}" in r.stderr + r.stdout
    blocker = tmp_path / "not-a-socket"
    blocker.write_text("keep me")
    r = subprocess.run([os.path.join(BUILD, "bin", "shoald"), "--socket", str(tmp_path / "s.sock"), "--workers", "1",
                        "--metrics-address", str(blocker)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"cannot serve metrics on {blocker}: it exists and is not a socket" in r.stderr + r.stdout
    assert blocker.read_text() == "keep me"


# ---- an attacker: connections that send nothing ----

def test_idle_connections_keep_neither_scrapes_nor_jobs_from_being_served(make_daemon, tmp_path, archives):
    d, address = metrics_daemon(make_daemon, tmp_path, "tcp")
    host, port = address.rsplit(":", 1)
    attackers = []

    def attack(n):
        for _ in range(n):
            s = socket.create_connection((host, int(port)))
            attackers.append(s)
    with d.client() as victim:
        victim.load("add", archives["add"])
        attack(64)  # four times the server's bound, sending nothing
        for i in range(10):
            assert torch.equal(victim.infer("add", torch.full((2,), float(i))), torch.full((2,), 2 * i + 1.0))
            s = scrape(address)  # each scrape is a newcomer: it gets in, an idle one goes
            assert value(s, "shoal_requests_total", model="add", code="OK") == i + 1
            attack(8)  # and more of them keep coming
        # A slow attacker, a byte at a time, is no better.
        slow = socket.create_connection((host, int(port)))
        slow.sendall(b"GET /metr")
        attack(32)
        assert value(scrape(address), "shoal_requests_total", model="add", code="OK") == 10
        # Every attacker is closed: dropped for a newcomer, or past the request timeout (10 s).
        closed = 0
        for s in attackers + [slow]:
            s.settimeout(30)
            try:
                closed += s.recv(1) == b""
            except (ConnectionResetError, socket.timeout):
                closed += 1
        assert closed == len(attackers) + 1
        for s in attackers + [slow]:
            s.close()
        assert torch.equal(victim.infer("add", torch.zeros(1)), torch.ones(1))


# ---- a real Prometheus server ----

@pytest.fixture
def prometheus(tmp_path):
    """Starts Prometheus on loopback scraping the targets given (every second), with its
    storage under tmp_path; returns its address. Stopped (and killed if it must) after."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("the prometheus binary is absent (Debian package 'prometheus'; scripts/setup.sh installs it)")
    procs = []

    def start(targets):
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "shoal", "static_configs": [{"targets": targets}]}],
        }))
        log = open(tmp_path / "prometheus.log", "w")
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        procs.append((proc, log))
        return f"127.0.0.1:{port}"
    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def promql(server, query):
    url = f"http://{server}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        reply = json.load(r)
    assert reply["status"] == "success", reply
    return {json.dumps(sorted((k, v) for k, v in r["metric"].items() if k not in ("job", "instance"))):
            float(r["value"][1]) for r in reply["data"]["result"]}


def test_prometheus_scrapes_the_counts(make_daemon, tmp_path, archives, prometheus):
    d, address = metrics_daemon(make_daemon, tmp_path, "tcp")
    with d.client() as c:
        traffic(c, archives)
    server = prometheus([address])
    expected = {
        json.dumps(sorted({"__name__": "shoal_requests_total", "model": "add", "code": "OK"}.items())): N_OK,
        json.dumps(sorted({"__name__": "shoal_requests_total", "model": "raises", "code": "MODEL_ERROR"}.items())):
            M_ERRORS,
        # An empty label is no label to Prometheus.
        json.dumps(sorted({"__name__": "shoal_requests_total", "code": "MODEL_NOT_FOUND"}.items())): 1,
    }
    deadline = time.time() + 120
    got = None
    while time.time() < deadline:
        try:
            got = promql(server, "shoal_requests_total")
        except OSError:
            got = None  # not listening yet
        if got == expected:
            break
        time.sleep(0.5)
    assert got == expected, open(tmp_path / "prometheus.log").read()[-3000:]
    assert promql(server, 'up{job="shoal"}') == {json.dumps([["__name__", "up"]]): 1.0}
    # The histograms arrive whole: PromQL sums their buckets.
    count = promql(server, 'sum by (model) (shoal_compute_duration_seconds_count)')
    assert count == {json.dumps([["model", "add"]]): N_OK, json.dumps([["model", "raises"]]): M_ERRORS}
    p99 = promql(server, 'histogram_quantile(0.99, sum by (le) (shoal_compute_duration_seconds_bucket{model="add"}))')
    assert len(p99) == 1 and 0 < list(p99.values())[0] <= 60


@pytest.mark.parametrize("zygote", ["yes", "no"])
def test_model_code_holds_no_listening_socket_of_shoald(make_daemon, tmp_path, zygote):
    """Neither the metrics socket (TCP: model code gets no network) nor the client socket
    reaches a worker, forked by the zygote or exec'd: model code cannot accept scrapes or
    clients' connections."""
    import shoal_test_models as m
    archive = shoal.export(m.InheritedListeners(), tmp_path / "listeners.pt")
    d, address = metrics_daemon(make_daemon, tmp_path, "tcp", args=["--zygote", zygote])
    with d.client() as c:
        c.load("listeners", archive)
        assert c.infer("listeners", torch.zeros(1)).item() == 0
    assert value(scrape(address), "shoal_requests_total", model="listeners", code="OK") == 1
