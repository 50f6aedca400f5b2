"""The KServe v2 REST front (http_address, shoal-http): a real shoald starts shoal-http, and a
real HTTP client checks the Open Inference Protocol's examples, keyword inputs and named
outputs, the binary tensor data extension with 16 MiB tensors both ways, bad requests
(clear 400s), model errors, readiness that follows shoald's, concurrency, idle connections,
the front's confinement (never an admin, no connect(2)), and a SIGKILLed front that is
started again while a Unix-socket client keeps being served."""
import json
import os
import signal
import socket
import struct
import threading
import time

import numpy as np
import pytest
import torch

import shoal
import shoal._build_info
import shoal_test_models as m
from conftest import Daemon, settle
from httpc import connect, free_port, request


def http_daemon(make_daemon, workers=1, args=()):
    port = free_port()
    d = make_daemon(workers=workers, args=("--http-address", f"127.0.0.1:{port}", *args))
    d.http = f"127.0.0.1:{port}"
    settle(lambda: (_up(d.http), "shoal-http does not answer on " + d.http), timeout=30)
    return d


def _up(address):
    try:
        return request(address, path="/v2")[0] == 200
    except OSError:
        return False


def call(address, method, path, doc=None, raw=None, headers=None):
    body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    status, h, out = request(address, method, path, body=body, headers=headers or {})
    return status, h, out


def get_json(address, path):
    status, _, body = call(address, "GET", path)
    return status, json.loads(body)


def infer(address, model, doc, raw=None, headers=None):
    status, h, body = call(address, "POST", f"/v2/models/{model}/infer", doc, raw, headers)
    return status, h, body


def shoal_http_pid(d):
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                st = f.read()
        except OSError:
            continue
        if "\nPPid:\t%d\n" % d.proc.pid in st and st.startswith("Name:\tshoal-http"):
            return int(pid)
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One shoald for the tests that only ask (killing its front or a worker changes nothing
    the next test relies on: both come back)."""
    tmp_path = tmp_path_factory.mktemp("http")
    made = []

    def make(workers=1, args=()):
        made.append(Daemon(tmp_path, workers, args))
        return made[-1]
    d = http_daemon(make, workers=2)
    models = {"add": m.AddConst(1.0), "kw": m.KeywordEncoder(), "raises": m.Raises(),
              "nested": m.ReturnsNamedTuples(), "detection": m.ReturnsDetection(), "crashy": m.Crashy(),
              "labels": m.Labels()}
    with d.client() as c:
        for name, obj in models.items():
            c.load(name, shoal.export(obj, tmp_path / f"{name}.pt"))
        # Exported with example inputs: its manifest declares its tensors.
        c.load("declared", shoal.export(m.AddConst(1.0), tmp_path / "declared.pt", example_inputs=(torch.zeros(2, 3),)))
    yield d
    d.stop()


def test_the_specs_examples_health_metadata_and_a_json_infer(served):
    a = served.http
    status, doc = get_json(a, "/v2")
    assert status == 200 and doc["name"] == "shoal" and "binary_tensor_data" in doc["extensions"]
    assert get_json(a, "/v2/health/live") == (200, {"live": True})
    assert get_json(a, "/v2/health/ready") == (200, {"ready": True})
    status, doc = get_json(a, "/v2/models/add")
    assert status == 200 and doc["name"] == "add" and doc["platform"] == "shoal_python"
    assert get_json(a, "/v2/models/add/ready")[0] == 200
    # The spec's request form: a flat row-major "data" with its shape; nested arrays too.
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    for data in (x.flatten().tolist(), x.tolist()):
        status, h, body = infer(a, "add", {"id": "42", "inputs": [
            {"name": "INPUT__0", "shape": [2, 3], "datatype": "FP32", "data": data}]})
        assert status == 200, body
        assert h["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert doc["id"] == "42" and doc["model_name"] == "add"
        (out,) = doc["outputs"]
        assert out["name"] == "output__0" and out["datatype"] == "FP32" and out["shape"] == [2, 3]
        assert out["data"] == (x * 2 + 1).flatten().tolist()  # AddConst: 2x + k
    # Integer tensors keep their type.
    status, _, body = infer(a, "add", {"inputs": [{"name": "x", "shape": [3], "datatype": "INT64",
                                                   "data": [1, 2, 3]}]})
    assert status == 200, body
    (out,) = json.loads(body)["outputs"]
    assert out["datatype"] == "FP32" and out["data"] == [3.0, 5.0, 7.0]  # 2x + 1.0 promotes


def test_inputs_by_keyword_and_outputs_by_name(served):
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = m.KeywordEncoder()(input_ids=ids, attention_mask=mask)
    status, _, body = infer(served.http, "kw", {"inputs": [
        {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": ids.flatten().tolist()},
        {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": mask.flatten().tolist()}],
        "outputs": [{"name": "pooled"}]})
    assert status == 200, body
    (out,) = json.loads(body)["outputs"]
    assert out["name"] == "pooled" and out["shape"] == [2]
    assert out["data"] == expected["pooled"].tolist()
    # Without "outputs": every key of the dict; a named tuple's fields, a float as a 0-d FP64.
    status, _, body = infer(served.http, "kw", {"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]})
    assert sorted(o["name"] for o in json.loads(body)["outputs"]) == ["last_hidden_state", "pooled"]
    status, _, body = infer(served.http, "detection", {"inputs": [
        {"name": "INPUT__0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
    outs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outs["boxes"]["data"] == [2.0, 3.0]
    assert outs["score"] == {"name": "score", "datatype": "FP64", "shape": [], "data": [0.5]}


def test_metadata_lists_the_tensors_a_manifest_declares(served):
    status, doc = get_json(served.http, "/v2/models/declared")
    assert status == 200, doc
    assert doc["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 3]}]
    assert doc["outputs"] == [{"name": "output__0", "datatype": "FP32", "shape": [-1, 3]}]
    status, doc = get_json(served.http, "/v2/models/add")  # exported without: none declared
    assert (doc["inputs"], doc["outputs"]) == ([], [])
    with served.client() as c:
        declared = next(x for x in c.models() if x["name"] == "declared")
        assert declared["inputs"] == [{"name": "input0", "dtype": "float32", "shape": [-1, 3]}]


def test_a_plain_name_describes_the_version_that_serves_it(served, tmp_path):
    """GET /v2/models/M without a version is the version an infer on M runs: the newest
    (numbers compare as numbers, 10 > 2), not the first name in sorted order (it was v:1,
    whose declared inputs differ)."""
    with served.client() as c:
        for version, width in (("1", 3), ("2", 4), ("10", 5)):
            c.load(f"v:{version}", shoal.export(m.AddConst(float(version)), tmp_path / f"v{version}.pt",
                                                example_inputs=(torch.zeros(2, width),)))
    x = {"inputs": [{"name": "INPUT__0", "shape": [1, 5], "datatype": "FP32", "data": [0] * 5}]}
    status, _, body = infer(served.http, "v", x)
    assert status == 200 and json.loads(body)["outputs"][0]["data"] == [10.0] * 5, body  # v:10 runs
    status, doc = get_json(served.http, "/v2/models/v")
    assert status == 200, doc
    assert doc["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 5]}], doc
    assert doc["versions"] == ["1", "2", "10"]  # newest last, by the rule that picks v:10 (not text order)
    status, doc = get_json(served.http, "/v2/models/v/versions/2")  # a version: that one
    assert status == 200 and doc["inputs"][0]["shape"] == [-1, 4], doc


def test_an_empty_outputs_list_asks_for_every_output(served):
    """The spec: without requested outputs, all of them; "outputs": [] requests none by
    name, as Triton reads it (it answered with no outputs at all)."""
    status, _, body = infer(served.http, "kw", {"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}], "outputs": []})
    assert status == 200, body
    assert sorted(o["name"] for o in json.loads(body)["outputs"]) == ["last_hidden_state", "pooled"]


def test_a_list_of_strings_is_one_bytes_output(served):
    status, _, body = infer(served.http, "labels", {"inputs": [
        {"name": "INPUT__0", "shape": [3], "datatype": "FP32", "data": [1, -1, 2]}]})
    assert status == 200, body
    assert json.loads(body)["outputs"] == [
        {"name": "output__0", "datatype": "BYTES", "shape": [3], "data": ["cat", "dog", "cat"]}]


def test_binary_tensors_of_16_mib_both_ways(served):
    x = torch.randn(4, 1024, 1024)  # 16 MiB of FP32
    header = json.dumps({"inputs": [{"name": "INPUT__0", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.numel() * 4}}],
                         "outputs": [{"name": "output__0", "parameters": {"binary_data": True}}]}).encode()
    body = header + x.numpy().tobytes()
    status, h, out = infer(served.http, "add", None, raw=body,
                           headers={"Inference-Header-Content-Length": str(len(header)),
                                    "Content-Type": "application/octet-stream"})
    assert status == 200, out[:500]
    n = int(h["Inference-Header-Content-Length"])
    doc = json.loads(out[:n])
    (o,) = doc["outputs"]
    assert o["parameters"]["binary_data_size"] == x.numel() * 4 and o["shape"] == [4, 1024, 1024]
    y = np.frombuffer(out[n:], dtype=np.float32).reshape(4, 1024, 1024)
    assert torch.equal(torch.from_numpy(y.copy()), x * 2 + 1)
    # binary_data_output: every output binary; a binary input beside a JSON one.
    ids = np.array([[3, 4]], dtype=np.int64)
    header = json.dumps({"inputs": [
        {"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
        {"name": "attention_mask", "shape": [1, 2], "datatype": "INT64", "data": [1, 0]}],
        "parameters": {"binary_data_output": True}}).encode()
    status, h, out = infer(served.http, "kw", None, raw=header + ids.tobytes(),
                           headers={"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, out
    n = int(h["Inference-Header-Content-Length"])
    outs, at, got = json.loads(out[:n])["outputs"], n, {}
    for o in outs:
        size = o["parameters"]["binary_data_size"]
        got[o["name"]] = np.frombuffer(out[at:at + size], dtype=np.float32).tolist()
        at += size
    assert at == len(out)
    assert got == {"last_hidden_state": [3.0, 0.0], "pooled": [3.0]}


BOOLS = b'{"inputs":[{"name":"x","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":1}}]}'
SHORT = b'{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":4}}]}'
BAD = [
    ("not JSON", b"{nope", {}, 400, "not JSON"),
    ("no inputs", json.dumps({"id": "1"}).encode(), {}, 400, "\"inputs\""),
    ("unknown datatype", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP8",
                                                 "data": [1]}]}).encode(), {}, 400, "'FP8'"),
    ("shape and data disagree", json.dumps({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32",
                                                        "data": [1, 2, 3]}]}).encode(), {}, 400, "holds 3"),
    ("ints as floats", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "INT32",
                                               "data": [1.5]}]}).encode(), {}, 400, "integers"),
    ("negative size", json.dumps({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32",
                                              "data": []}]}).encode(), {}, 400, ">= 0"),
    ("two inputs of one name", json.dumps({"inputs": [
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]},
        {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}).encode(), {}, 400, "two inputs"),
    ("a gap in positions", json.dumps({"inputs": [{"name": "INPUT__1", "shape": [1], "datatype": "FP32",
                                                   "data": [1]}]}).encode(), {}, 400, "__0 is missing"),
    ("binary size not the shape's", SHORT + b"\0" * 4, {"Inference-Header-Content-Length": str(len(SHORT))}, 400,
     "make 8"),
    ("header length past the body", b"{}", {"Inference-Header-Content-Length": "100"}, 400, "the body has 2"),
    ("unclaimed binary bytes", b'{"inputs":[]}xyz', {"Inference-Header-Content-Length": "13"}, 400,
     "3 bytes of binary data"),
    ("a JSON nesting bomb", b"[" * (8 << 20), {}, 400, "nests deeper than"),
    ("a zero hiding a huge size", json.dumps({"inputs": [{"name": "x", "shape": [0, 1 << 62, 1 << 62],
                                                          "datatype": "FP32", "data": []}]}).encode(), {}, 400,
     "2^40 elements"),
    ("one position twice", json.dumps({"inputs": [
        {"name": "a__0", "shape": [1], "datatype": "FP32", "data": [1]},
        {"name": "b__0", "shape": [1], "datatype": "FP32", "data": [2]}]}).encode(), {}, 400, "given twice"),
    ("UINT8 out of range", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8",
                                                   "data": [300]}]}).encode(), {}, 400, "out of its range"),
    ("BOOL bytes not 0 or 1", BOOLS + b"\x02", {"Inference-Header-Content-Length": str(len(BOOLS))}, 400,
     "bytes 0 or 1"),
    ("unknown output", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                                   "outputs": [{"name": "logits"}]}).encode(), {}, 400, "no output 'logits'"),
    ("an output named twice", json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                                          "outputs": [{"name": "output__0"}, {"name": "output__0"}]}).encode(), {},
     400, "outputs[1]: 'output__0' is asked for twice"),
]


@pytest.mark.parametrize("what,body,headers,status,says", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_clear_errors(served, what, body, headers, status, says):
    got, h, out = infer(served.http, "add", None, raw=body, headers=headers)
    assert got == status, out
    error = json.loads(out)["error"]
    assert says in error, error
    if what != "unknown output":
        assert "model 'add'" in error  # which model it was for


def test_bytes_that_are_not_utf8_are_a_bad_request_and_no_worker_dies(served):
    """A BYTES element reaches the model as a str: bytes that do not decode as UTF-8 (an
    image sent as BYTES) are the request's fault, said before anything reaches a worker,
    whose message loop would stop on them (it did: a dead worker per request)."""
    with served.client() as c:
        restarts = c.status()["worker_restarts"]
    element = struct.pack("<I", 4) + b"\xff\xd8\xff\xe0"  # a JPEG's first bytes
    header = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}]}).encode()
    status, _, body = infer(served.http, "add", None, raw=header + element,
                            headers={"Inference-Header-Content-Length": str(len(header))})
    assert status == 400, body
    error = json.loads(body)["error"]
    assert "inputs[0] ('INPUT__0')" in error and "not UTF-8" in error and "model 'add'" in error, error
    with served.client() as c:
        assert c.status()["worker_restarts"] == restarts
    status, _, body = infer(served.http, "add", {"inputs": [
        {"name": "INPUT__0", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert status == 200, body


def test_bytes_over_shoalds_call_limits_are_a_bad_request_naming_the_limit(served):
    """A BYTES element reaches the model as a str in shoal's call, which holds at most 64 KiB
    a string and 4096 items (protocol/call_tree.h): past either the answer is a 400 that says
    the limit and what to send instead, before anything reaches shoald."""
    big = {"inputs": [{"name": "INPUT__0", "shape": [1], "datatype": "BYTES", "data": ["a" * (64 * 1024 + 1)]}]}
    many = {"inputs": [{"name": "INPUT__0", "shape": [4096], "datatype": "BYTES", "data": ["a"] * 4096}]}
    for doc, says in ((big, "65537 bytes, more than the 65536"), (many, "past the 4096")):
        status, _, body = infer(served.http, "add", doc)
        assert status == 400, body
        error = json.loads(body)["error"]
        assert says in error and "as a UINT8 tensor" in error, error
        assert "inputs[0] ('INPUT__0')" in error and "model 'add'" in error, error


def test_wrong_models_routes_and_methods(served):
    a = served.http
    status, _, body = infer(a, "nope", {"inputs": []})
    assert status == 404 and "'nope' is not loaded" in json.loads(body)["error"]
    assert get_json(a, "/v2/models/nope")[0] == 404
    assert get_json(a, "/v2/models/add/versions/7/ready")[0] == 404
    assert get_json(a, "/v2/elsewhere")[0] == 404
    status, h, _ = call(a, "GET", "/v2/models/add/infer")
    assert status == 405 and h["Allow"] == "POST"
    status, h, _ = call(a, "DELETE", "/v2/models/add")  # no write access to models over HTTP
    assert status == 405 and h["Allow"] == "GET, HEAD"
    # The model's own error and a result that is no v2 tensor: 500 with what happened.
    x = {"inputs": [{"name": "INPUT__0", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    status, _, body = infer(a, "raises", x)
    assert status == 500 and "bad input of shape (2,)" in json.loads(body)["error"]
    status, _, body = infer(a, "nested", x)
    assert status == 500 and "'labels'" in json.loads(body)["error"]
    status, _, body = infer(a, "crashy", {"inputs": [{"name": "INPUT__0", "shape": [1], "datatype": "FP32",
                                                      "data": [-1]}]})
    assert status == 500 and "WORKER_CRASHED" in json.loads(body)["error"]


def test_expect_100_continue_and_head(served):
    x = np.ones(4, dtype=np.float32)
    header = json.dumps({"inputs": [{"name": "INPUT__0", "shape": [4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    body = header + x.tobytes()
    host, port = served.http.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  + f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n")  # before the body is sent
        s.sendall(body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200 ")
    status, h, out = call(served.http, "HEAD", "/v2")
    assert status == 200 and out == b""
    assert int(h["Content-Length"]) == len(request(served.http, path="/v2")[2])


def test_probes_are_answered_while_every_infer_thread_waits(served, tmp_path):
    with served.client() as c:
        c.load("sleepy", shoal.export(m.Sleeps(), tmp_path / "sleepy.pt"))
    x = {"inputs": [{"name": "INPUT__0", "shape": [1], "datatype": "FP32", "data": [1.5]}],
         "parameters": {"timeout": 2_500_000}}  # Triton's: microseconds
    busy = [threading.Thread(target=infer, args=(served.http, "sleepy", x)) for _ in range(34)]
    for t in busy:
        t.start()
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert get_json(served.http, "/v2/health/live")[0] == 200
        assert time.monotonic() - t0 < 1.0  # not behind the jobs that hold every infer thread
    finally:
        for t in busy:
            t.join(120)


def test_a_request_timeout_is_the_jobs_deadline(served, tmp_path):
    with served.client() as c:
        if "sleepy2" not in [x["name"] for x in c.models()]:
            c.load("sleepy2", shoal.export(m.Sleeps(), tmp_path / "sleepy2.pt"))
    status, _, body = infer(served.http, "sleepy2", {
        "inputs": [{"name": "INPUT__0", "shape": [1], "datatype": "FP32", "data": [5]}],
        "parameters": {"timeout": 300_000}})
    assert status == 504, body
    assert "TIMEOUT" in json.loads(body)["error"]


def test_a_body_over_http_max_body_mb_is_413(make_daemon):
    d = http_daemon(make_daemon, args=("--http-max-body-mb", "1"))
    status, _, body = infer(d.http, "add", None, raw=b" " * (2 << 20))
    assert status == 413 and b"larger than 1048576" in body
    assert request(d.http, path="/v2/health/live")[0] == 200  # and it still serves


def test_errors_before_the_request_is_read_are_v2_errors_too(served):
    """A body over the limit (413), a header over 16 KiB (431) and a request HTTP cannot
    parse (400) are answered before the service sees them; they too are the v2 error body,
    {"error": ...} as application/json, which clients (tritonclient) decode: they were
    text/plain."""
    host, port = served.http.split(":")

    def raw(head):
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(head)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return reply
                reply += chunk
    for head, status, says in (
            (b"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n", 413,
             "larger than 67108864"),
            (b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "larger than 16384"),
            (b"POST /v2/models/add/infer HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400,
             "Content-Length")):
        reply = raw(head)
        headers, _, body = reply.partition(b"\r\n\r\n")
        assert headers.startswith(b"HTTP/1.1 %d " % status), reply[:300]
        assert b"\r\nContent-Type: application/json\r\n" in headers, headers
        assert says in json.loads(body)["error"], body


def test_concurrent_clients_on_kept_alive_connections(served):
    errors, done = [], []

    def client(k):
        conn = connect(served.http)
        try:
            for i in range(25):
                x = [float(k), float(i)]
                conn.request("POST", "/v2/models/add/infer", body=json.dumps({"inputs": [
                    {"name": "INPUT__0", "shape": [2], "datatype": "FP32", "data": x}]}))
                r = conn.getresponse()
                body = r.read()
                out = json.loads(body)["outputs"][0]["data"] if r.status == 200 else body
                if out != [2.0 * k + 1, 2.0 * i + 1]:
                    errors.append((k, i, r.status, out))
            done.append(k)
        finally:
            conn.close()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(done) == 16


def test_idle_connections_do_not_keep_a_client_out(served):
    host, port = served.http.split(":")
    idle = [socket.create_connection((host, int(port))) for _ in range(80)]  # past the 64 allowed
    try:
        status, _, body = infer(served.http, "add", {"inputs": [
            {"name": "INPUT__0", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert status == 200, body
    finally:
        for s in idle:
            s.close()


def test_readiness_follows_shoalds(make_daemon, tmp_path):
    d = http_daemon(make_daemon)
    slow = shoal.export(m.SlowLoad(4), tmp_path / "slow.pt")
    loader = threading.Thread(target=lambda: d.client().load("slow", slow))
    loader.start()
    try:
        settle(lambda: (get_json(d.http, "/v2/models/slow/ready")[0] == 503, "slow is not reported as loading"))
        assert get_json(d.http, "/v2/health/ready")[0] == 503
    finally:
        loader.join(60)
    assert get_json(d.http, "/v2/models/slow/ready")[0] == 200
    assert get_json(d.http, "/v2/health/ready")[0] == 200


@pytest.mark.skipif(not shoal._build_info.SECCOMP, reason="built without libseccomp")
def test_the_front_runs_confined(served):
    """shoal-http's session is never an admin's (client_front_test shows the refusal); its
    seccomp filter keeps it from opening another connection with shoald's uid."""
    pid = shoal_http_pid(served)
    assert pid is not None
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    assert status["Seccomp"].strip() == "2"  # a filter: connect(2) is refused
    assert status["NoNewPrivs"].strip() == "1"
    # Every thread, not only the one that installed it.
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            assert "Seccomp:\t2" in f.read()


def test_a_killed_front_is_started_again_while_socket_clients_are_served(served):
    pid = shoal_http_pid(served)
    stop, failures, served_jobs = threading.Event(), [], []

    def victim():
        with served.client() as c:
            while not stop.is_set():
                try:
                    y = c.infer("add", torch.ones(3))
                    assert torch.equal(y, torch.full((3,), 3.0))
                    served_jobs.append(1)
                except Exception as e:  # noqa: BLE001 - any failure is the test's
                    failures.append(repr(e))
    t = threading.Thread(target=victim)
    t.start()
    try:
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        before = len(served_jobs)
        settle(lambda: (shoal_http_pid(served) not in (None, pid), "shoal-http was not started again"), 30)
        settle(lambda: (_up(served.http), "the new shoal-http does not answer"), 30)
        status, _, body = infer(served.http, "add", {"inputs": [
            {"name": "INPUT__0", "shape": [1], "datatype": "FP32", "data": [1]}]})
        assert status == 200, body
        time.sleep(0.2)
    finally:
        stop.set()
        t.join(30)
    assert not failures
    assert len(served_jobs) > before  # served while the front was down and after
    with open(served.log_path) as f:
        assert "shoal-http (the HTTP front on" in f.read()


def test_shoal_http_ends_with_shoald(make_daemon):
    d = http_daemon(make_daemon)
    pid = shoal_http_pid(d)
    assert d.stop() == 0
    settle(lambda: (not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                    "shoal-http outlived shoald"), 10)
