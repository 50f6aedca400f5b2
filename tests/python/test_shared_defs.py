"""One definition, used by C++ and Python alike: the dtype table, the default socket path,
the zip reader, the output encoder (issue 10), the spin budget and the client's frame reader. Each test shows that the Python side is
the C++ one, or behaves exactly like it."""
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import torch

import shoal
import shoal.archive
import shoal.tools
import shoal_parity_models as parity
from conftest import BUILD
from shoal import _native, _tensors

CORPUS = os.path.join(os.path.dirname(__file__), "..", "fuzz", "corpus")


# ---- the dtype table --------------------------------------------------------------------
def test_the_python_dtype_table_is_the_cpp_one_and_agrees_with_torch():
    names = [row[0] for row in _native.DTYPES]
    assert names == list(_tensors.DTYPES) and len(names) == 12
    for name, itemsize, scalar_type, storage in _native.DTYPES:
        dtype = _tensors.DTYPES[name]
        assert dtype is getattr(torch, name)
        assert _tensors.ITEMSIZE[name] == itemsize == torch.empty((), dtype=dtype).element_size()
        assert _tensors.dtype_name(dtype) == name
        assert storage == scalar_type + "Storage"
        assert getattr(torch, storage)().dtype == dtype  # the class pickles name
        assert shoal.tools.STORAGE_DTYPES[storage] == name


def test_manifest_specs_accept_exactly_the_table(tmp_path):
    class Reader:
        def __init__(self, dtype):
            import json
            self.manifest = json.dumps({"format": 1, "entry": "model/model.pkl", "outputs": [],
                                        "inputs": [{"dtype": dtype, "shape": [1]}]}).encode()

        def has_record(self, name):
            return True

        def get_record(self, name):
            return self.manifest
    for name in _tensors.DTYPES:
        assert shoal.archive.read_manifest("m.pt", Reader(name))["inputs"][0]["dtype"] == name
    with pytest.raises(shoal.ArchiveError, match="known dtypes"):
        shoal.archive.read_manifest("m.pt", Reader("qint8"))


# ---- the default socket path ------------------------------------------------------------
@pytest.mark.parametrize("env", [{"SHOAL_SOCKET": "/somewhere/s.sock"},
                                 {"SHOAL_SOCKET": "", "XDG_RUNTIME_DIR": "/run/user/1234"},
                                 {"SHOAL_SOCKET": "", "XDG_RUNTIME_DIR": ""}])
def test_the_default_socket_path_is_shoalds(env):
    assert shoal.default_socket_path is _native.default_socket_path
    code = "import shoal; print(shoal.default_socket_path())"
    full = dict(os.environ, PYTHONPATH=os.path.join(BUILD, "python"), **env)
    got = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         check=True).stdout.strip()
    if env.get("SHOAL_SOCKET"):
        assert got == env["SHOAL_SOCKET"]
    elif os.geteuid() == 0:
        assert got == "/run/shoal/shoal.sock"
    elif env.get("XDG_RUNTIME_DIR"):
        assert got == "/run/user/1234/shoal/shoal.sock"
    else:
        assert got == f"/tmp/shoal-{os.geteuid()}/shoal.sock"


# ---- the spin budget and the frame reader -----------------------------------------------
@pytest.mark.parametrize("value,us", [("75", 75), ("10000", 10000), ("10001", 0), ("-5", 0), ("5us", 0),
                                      ("", 0)])
def test_the_python_client_reads_shoal_spin_us_as_shoald_does(value, us):
    code = "from shoal import _native; print(_native.spin_budget_us())"
    full = dict(os.environ, PYTHONPATH=os.path.join(BUILD, "python"), SHOAL_SPIN_US=value)
    got = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert int(got) == us


@pytest.fixture
def spin_budget():
    """Sets this process's budget (and restores it): the Python client reads frames through
    the C++ client's RecvFrame, which polls that long."""
    before, env = _native.spin_budget_us(), os.environ.get("SHOAL_SPIN_US")
    yield _native.set_spin_budget_us
    _native.set_spin_budget_us(before)
    if env is None:  # set_spin_budget_us sets it for children: unset, as it was
        os.environ.pop("SHOAL_SPIN_US", None)
    else:
        os.environ["SHOAL_SPIN_US"] = env


def _voluntary_switches():
    with open("/proc/thread-self/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc/thread-self/status")


# The peer: another process, started before and running (busy-waiting) when the frame goes.
_PEER = """
import os, socket, struct, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read(1)
until = time.perf_counter() + float(sys.argv[2])
if sys.argv[3] == "busy":
    while time.perf_counter() < until:
        pass
else:
    time.sleep(float(sys.argv[2]))
sock.sendall(struct.pack("<I", 2) + b"ok")
"""


def _switches_reading_a_frame_sent_after(delay_s, busy=True):
    """The reading thread's voluntary context switches while it reads one frame that another
    process sends ``delay_s`` after the read began: busy-waiting (so it is running and sends
    on time), or sleeping (so that on a loaded machine it leaves this process the CPU to
    reach its read before the frame comes)."""
    from shoal import _connection
    a, b = socket.socketpair()
    conn = _connection.Connection(a, "test")
    peer = subprocess.Popen([sys.executable, "-c", _PEER, str(b.fileno()), str(delay_s), "busy" if busy else "sleep"],
                            pass_fds=[b.fileno()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline() == "ready\n"
        before = _voluntary_switches()
        os.write(peer.stdin.fileno(), b"g")
        body = conn._recv_frame(None)
        after = _voluntary_switches()
        assert body == b"ok"
        return after - before
    finally:
        peer.stdin.close()
        peer.wait()
        conn.close()
        b.close()


def test_the_python_client_polls_for_a_reply_before_it_sleeps(spin_budget):
    spin_budget(10000)  # a frame 2 ms away comes within the budget: read without sleeping
    assert min(_switches_reading_a_frame_sent_after(0.002) for _ in range(5)) == 0
    spin_budget(0)      # no budget: the reader sleeps until the frame comes
    assert min(_switches_reading_a_frame_sent_after(0.05, busy=False) for _ in range(3)) >= 1


def test_the_python_client_does_not_poll_past_a_deadline(spin_budget):
    from shoal import _connection
    spin_budget(10000)  # the largest budget, 10 ms
    a, b = socket.socketpair()
    conn = _connection.Connection(a, "test")
    try:
        t0 = time.monotonic()
        for _ in range(20):  # 200 ms if each read polled its budget
            with pytest.raises(socket.timeout):
                conn._recv_frame(t0 - 1)
        assert time.monotonic() - t0 < 0.1
        b.sendall(struct.pack("<I", 2) + b"o")  # half a frame stays for the next read
        with pytest.raises(socket.timeout):
            conn._recv_frame(time.monotonic() + 0.02)
        b.sendall(b"k")
        assert conn._recv_frame(None) == b"ok"
    finally:
        conn.close()
        b.close()


def test_the_python_client_takes_the_fds_that_came_with_frames():
    from shoal import _connection
    a, b = socket.socketpair()
    conn = _connection.Connection(a, "test")
    r, w = os.pipe()
    try:
        socket.send_fds(b, [struct.pack("<I", 1) + b"x"], [r, w])
        assert conn._recv_frame(None) == b"x"
        assert conn._frames.fds_held() == 2
        got = conn._frames.take_fds(1)
        assert len(got) == 1 and os.fstat(got[0]).st_ino == os.fstat(r).st_ino
        os.close(got[0])
        with pytest.raises(ValueError):
            conn._frames.take_fds(2)
    finally:
        conn.close()  # closes the fd not taken
        b.close()
        os.close(r)
        os.close(w)
    assert conn._frames.fds_held() == 0


def test_a_closed_connection_reads_nothing_even_where_its_descriptor_number_is_reused():
    from shoal import _connection
    a, b = socket.socketpair()
    number = a.fileno()
    conn = _connection.Connection(a, "test")
    conn.close()
    b.close()
    others = []
    try:
        for _ in range(64):  # until a new socket gets the old number
            pair = socket.socketpair()
            others.append(pair)
            if number in (pair[0].fileno(), pair[1].fileno()):
                break
        for x, y in others:
            y.sendall(struct.pack("<I", 5) + b"other")
            x.sendall(struct.pack("<I", 5) + b"other")
        with pytest.raises(ConnectionError):
            conn._frames.read(0.1)
    finally:
        for x, y in others:
            x.close()
            y.close()


def test_the_frame_reader_takes_odd_timeouts_and_never_waits_for_a_read_with_the_gil():
    from shoal import _connection
    a, b = socket.socketpair()
    conn = _connection.Connection(a, "test")
    try:
        with pytest.raises(ValueError):
            conn._frames.read(float("nan"))
        b.sendall(struct.pack("<I", 2) + b"ok")
        assert conn._frames.read(1e30) == b"ok"  # no limit, no overflow
        b.sendall(struct.pack("<I", 2) + b"ok")
        assert conn._frames.read(float("inf")) == b"ok"
        reading = threading.Thread(target=lambda: conn._frames.read(5.0))
        reading.start()
        time.sleep(0.2)  # blocked in read, holding the reader
        with pytest.raises(RuntimeError, match="another thread is reading"):
            conn._frames.fds_held()
        b.sendall(struct.pack("<I", 2) + b"ok")
        reading.join()
        assert conn._frames.fds_held() == 0
    finally:
        conn.close()
        b.close()


# The peer for the next test: signals its parent, then sends a frame a little later.
_SIGNALS_THEN_SENDS = """
import os, signal, socket, struct, sys, time
sock = socket.socket(fileno=int(sys.argv[1]))
sys.stdin.read(1)
os.kill(os.getppid(), signal.SIGUSR1)
time.sleep(0.3)
sock.sendall(struct.pack("<I", 2) + b"ok")
"""


def test_a_signal_whose_handler_returns_does_not_end_the_wait():
    from shoal import _connection
    seen = []
    old = signal.signal(signal.SIGUSR1, lambda *_: seen.append(1))
    a, b = socket.socketpair()
    conn = _connection.Connection(a, "test")
    peer = subprocess.Popen([sys.executable, "-c", _SIGNALS_THEN_SENDS, str(b.fileno())], pass_fds=[b.fileno()],
                            stdin=subprocess.PIPE)
    try:
        os.write(peer.stdin.fileno(), b"g")
        assert conn._recv_frame(time.monotonic() + 30) == b"ok"  # the handler ran; the wait went on
        assert seen == [1]
    finally:
        signal.signal(signal.SIGUSR1, old)
        peer.stdin.close()
        peer.wait()
        conn.close()
        b.close()


def _worker_spin_env(daemon):
    """SHOAL_SPIN_US in the environment of the daemon's worker: the budget it polls with."""
    pid = daemon.worker_pids()[0]
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    return env.get(b"SHOAL_SPIN_US", b"").decode()


@pytest.mark.parametrize("args,env,worker_spin,logged", [
    (("--spin-us", "120"), None, "120", "poll 120 us before they sleep (spin_us)"),
    ((), "75", "75", "poll 75 us before they sleep (spin_us auto: SHOAL_SPIN_US)"),
    ((), "50us", "0", "SHOAL_SPIN_US='50us' is not a number"),
    ((), None, "0", "poll 0 us before they sleep (spin_us auto: 1 CPUs for 1 worker interpreters)"),
])
def test_the_worker_polls_what_shoald_chose(make_daemon, monkeypatch, args, env, worker_spin, logged):
    if env is None:
        monkeypatch.delenv("SHOAL_SPIN_US", raising=False)
    else:
        monkeypatch.setenv("SHOAL_SPIN_US", env)
    # One CPU: spin_us = auto does not poll there (it wants 2 a worker interpreter and 4 more).
    d = make_daemon(workers=1, args=args, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert _worker_spin_env(d) == worker_spin
    assert logged in open(d.log_path).read()


# ---- the zip reader ---------------------------------------------------------------------
def _cpp_verdicts():
    out = subprocess.run([os.path.join(BUILD, "bin", "archive_corpus_replay"), "--verdicts", CORPUS],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("\t", 1) for line in out.splitlines())


def _printable(s):
    return "".join(c if 0x20 <= ord(c) < 0x7f else "?" for c in s.encode("utf-8", "surrogateescape").decode("latin-1"))


def test_inspect_refuses_exactly_the_corpus_zips_the_cpp_reader_refuses():
    verdicts = _cpp_verdicts()
    assert len(verdicts) >= 100 and sum(v == "ok" for v in verdicts.values()) >= 3
    for name, verdict in verdicts.items():
        info = shoal.tools.inspect_archive(os.path.join(CORPUS, name))
        if verdict == "ok":
            assert info["servable"], (name, info["problems"])
        else:
            assert not info["servable"], name
            assert any(verdict in _printable(p) for p in info["problems"]), (name, verdict, info["problems"])


def test_archive_tools_read_zips_only_through_the_cpp_reader(monkeypatch, tmp_path):
    path = shoal.export(torch.nn.Linear(3, 2), tmp_path / "lin.pt", example_inputs=(torch.ones(1, 3),))
    real = zipfile.ZipFile

    def writing_only(file, mode="r", *args, **kwargs):
        assert mode != "r", "archives are read through shoal._native.read_archive"
        return real(file, mode, *args, **kwargs)
    monkeypatch.setattr(zipfile, "ZipFile", writing_only)
    info = shoal.tools.inspect_archive(path)
    assert info["servable"] and info["storages"]["dtypes"] == {"float32": 4}
    assert set(shoal.archive.storage_records(path)) == {r["name"] for r in info["storages"]["records"]}
    assert not shoal.archive.is_torchscript(path)
    assert shoal.tools.repack(path, tmp_path / "again.pt") == len(_native.read_archive(str(path))["records"])
    assert shoal.tools.inspect_archive(tmp_path / "again.pt")["servable"]
    with pytest.raises(shoal.ArchiveError, match="not a readable zip file"):
        shoal.archive.storage_records(__file__)


# ---- the output encoder: both engines answer alike ---------------------------------------
def _archives(cls, tmp_path):
    """(packaged Python model, TorchScript archive) of the same source."""
    py = shoal.export(cls(), tmp_path / f"{cls.__name__}_py.pt")
    ts = tmp_path / f"{cls.__name__}_ts.pt"
    torch.jit.save(torch.jit.script(cls()), str(ts))
    return py, ts


def _shape_of(node, inputs):
    """An output tree with each descriptor reduced to what does not depend on where blocks
    happened to be allocated: dtype, shape, strides and whether it lies in an input."""
    (kind, val), = node.items()
    if kind == "tensor":
        where = "new"
        for d in inputs:
            if val["block"] == d["block"] and val["arena"] == d["arena"]:
                where = ("input", val["offset"] - d["offset"])
        if 0 in val["shape"]:
            where = "empty"
        return {"tensor": (val["dtype"], val["shape"], val["strides"], where)}
    if kind in ("tuple", "list"):
        return {kind: [_shape_of(n, inputs) for n in val]}
    if kind == "dict":
        return {kind: [[k, _shape_of(n, inputs)] for k, n in val]}
    return node


def _same(a, b):
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b) and all(type(k) is type(j) for k, j in zip(a, b))
        for k in a:
            _same(a[k], b[k])
    else:
        assert a == b


def _run_on_both(daemon, cls, tmp_path):
    """[(raw tree or error, decoded output or None)] for the Python and TorchScript engines;
    the model has the same name on both, so that messages can be compared."""
    results = []
    for path in _archives(cls, tmp_path):
        with daemon.client() as c:
            c.load("m", path)
            seen = []
            submit = c._conn.submit

            def spy(msg, *args, decode=None, **kw):  # sees each request and its ok reply
                def decode_seen(reply):
                    seen.append((msg, reply))
                    return decode(reply)
                return submit(msg, *args, decode=decode_seen if decode else None, **kw)
            c._conn.submit = spy
            free = [a.free_bytes() for a in c._arenas.values()]
            x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
            try:
                out = c.infer("m", x)
                msg, reply = seen[-1]
                results.append((_shape_of(reply["outputs"], msg["inputs"]), out))
            except shoal.Error as e:
                # the job id differs; everything else must be the same
                results.append(((type(e), re.sub(r"job \d+", "job N", e.message)), None))
            if results[-1][1] is None:  # (the input's block went with the exception)
                assert [a.free_bytes() for a in c._arenas.values()] == free  # copies made before the error are freed
            c.unload("m")
    return results


@pytest.mark.parametrize("cls", [parity.Nested, parity.Scalar, parity.Deep16])
def test_both_engines_send_the_same_tree(daemon, tmp_path, cls):
    (py_tree, py_out), (ts_tree, ts_out) = _run_on_both(daemon, cls, tmp_path)
    assert py_tree == ts_tree
    _same(py_out, ts_out)
    if cls is parity.Nested:
        # the input itself and its view go back in place, the rest is new or empty
        assert py_tree["tuple"][0]["tensor"][3] == ("input", 0)
        assert py_tree["tuple"][1]["tensor"][3] == ("input", 12)
        assert py_tree["tuple"][2]["list"][0]["tensor"][3] == "new"
        assert [n["tensor"][3] for n in py_tree["tuple"][6]["tuple"]] == ["empty", "empty"]
        assert py_tree["tuple"][4]["dict"][0][0] == 3 and py_tree["tuple"][5]["tuple"][2] == {"float": 2.5}


@pytest.mark.parametrize("cls, needle", [
    (parity.FloatKey, "output dict key of type float; use str or int keys"),
    (parity.BoolKey, "output dict key of type bool; use str or int keys"),
    (parity.Deep17, "output nested more than 16 levels deep"),
])
def test_both_engines_refuse_the_same_outputs_with_the_same_error(daemon, tmp_path, cls, needle):
    (py_err, _), (ts_err, _) = _run_on_both(daemon, cls, tmp_path)
    assert py_err == ts_err
    kind, message = py_err
    assert kind is shoal.ModelError
    assert message == f"model 'm', job N: {needle}"
