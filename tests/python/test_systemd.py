"""Running as a service, with real systemd tools (CI has no running systemd):
systemd-analyze verify, socket activation through systemd-socket-activate, the notify
protocol against a NOTIFY_SOCKET listener, permissions of a second, unprivileged user,
and the .deb unpacked into a scratch root."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

import shoal
import shoal._build_info
from conftest import BUILD, ensure_user

SHOALD = os.path.join(BUILD, "bin", "shoald")
needs = pytest.mark.skipif


def wait_socket(path, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            return
        time.sleep(0.05)
    raise TimeoutError(path)


@needs(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_installed_units_pass_systemd_analyze_verify_with_their_manual_pages(tmp_path):
    # what `cmake --install` puts in place, in a scratch root
    root = tmp_path / "root"
    r = subprocess.run(["cmake", "--install", BUILD], env=dict(os.environ, DESTDIR=str(root)), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    units = {p.name: p for p in root.rglob("shoal.s*") if p.parent.name == "system"}
    assert set(units) == {"shoal.socket", "shoal.service"}
    shoald = next(root.rglob("bin/shoald"))
    for unit in units.values():
        # verify checks that ExecStart exists: point it at the installed binary in the scratch root
        text = unit.read_text()
        unit.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={shoald}", text, flags=re.M))
    assert "Documentation=man:shoald(8)" in units["shoal.socket"].read_text()
    assert "Documentation=man:shoald(8) man:shoald.conf(5)" in units["shoal.service"].read_text()

    def verify(*extra, manpath=None):
        env = dict(os.environ, MANPATH=str(manpath or tmp_path / "none"))  # only the installed pages
        return subprocess.run(["systemd-analyze", "verify", *extra, str(units["shoal.socket"]),
                               str(units["shoal.service"])], capture_output=True, text=True, env=env)
    if not shoal._build_info.MAN_PAGES:
        r = verify("--man=no")
        assert r.returncode == 0 and r.stderr.strip() == "", r.stdout + r.stderr
        pytest.skip("this build has no manual pages (pandoc was not found; scripts/setup.sh installs it): "
                    "verified with --man=no only")
    mandir = next(root.rglob("man8")).parent
    assert {p.name for p in mandir.rglob("*.gz")} == {"shoald.8.gz", "shoald.conf.5.gz", "shoal.1.gz"}
    r = verify(manpath=mandir)  # the Documentation= pages are looked up with man(1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr.strip() == ""  # not even warnings
    # the check is real: without the page, or with a broken unit, it fails
    (mandir / "man8" / "shoald.8.gz").unlink()
    r = verify(manpath=mandir)
    assert r.returncode != 0 and "man shoald(8)" in r.stderr
    units["shoal.service"].write_text(units["shoal.service"].read_text().replace("Type=notify", "Type=notifyy"))
    r = verify("--man=no")
    assert "notifyy" in r.stderr


@needs(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate not installed")
def test_socket_activation(tmp_path, archives):
    sock = str(tmp_path / "activated.sock")
    log = open(tmp_path / "log", "w")
    p = subprocess.Popen(["systemd-socket-activate", "-l", sock, SHOALD, "--workers", "1",
                          "--model", f"add={archives['add']}"], stdout=log, stderr=subprocess.STDOUT,
                         start_new_session=True)
    try:
        wait_socket(sock)
        # the first connection starts shoald, which takes the listening socket from systemd
        deadline = time.time() + 60
        while True:
            try:
                with shoal.Client(sock) as c:
                    y = c.infer("add", torch.ones(3))
                    break
            except (shoal.ModelNotFound, shoal.Unavailable):
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        assert torch.equal(y, torch.full((3,), 3.0))
        with shoal.Client(sock) as c:
            assert c.status()["pid"] == p.pid  # systemd-socket-activate execs shoald in place
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(30)
    assert "adopt" not in open(tmp_path / "log").read()


class NotifyListener:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, text)

    def pump(self, until, stop=lambda: False):
        while time.monotonic() < until and not stop():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except socket.timeout:
                pass

    def has(self, text):
        return any(text in m for _, m in self.messages)


def test_notify_ready_watchdog_stopping(tmp_path):
    import shoal_test_models as m
    slow = shoal.export(m.BigWeights(50), tmp_path / "big.pt")  # takes a moment to load
    listener = NotifyListener(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="200000")
    sock = str(tmp_path / "s.sock")
    p = subprocess.Popen([SHOALD, "--socket", sock, "--workers", "2", "--model", f"big={slow}"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        listener.pump(time.monotonic() + 60, stop=lambda: listener.has("READY=1"))
        assert listener.has("READY=1")
        # READY only once the configured model serves: at this moment it is ready everywhere
        with shoal.Client(sock) as c:
            assert c.models() == [{"name": "big", "device": "auto", "engine": "python", "path": str(slow),
                                    "ready": True, "entry": "model/model.pkl", "methods": [], "inputs": [], "outputs": [],
                                    "queued": 0,
                                    "failed": False, "batches": 0, "batched_jobs": 0}]
            assert all("big" in w["models"] for w in c.status()["workers"])
        first = [t for t, msg in listener.messages if "STATUS=starting" in msg]
        ready = [t for t, msg in listener.messages if "READY=1" in msg]
        assert first and first[0] <= ready[0]
        assert len(ready) == 1
        # WATCHDOG=1 every WATCHDOG_USEC/2 = 100 ms
        start = time.monotonic()
        listener.pump(start + 1.0)
        pings = [t for t, msg in listener.messages if msg == "WATCHDOG=1" and t >= start]
        assert 6 <= len(pings) <= 13, len(pings)
        p.send_signal(signal.SIGTERM)
        listener.pump(time.monotonic() + 10, stop=lambda: listener.has("STOPPING=1"))
        assert listener.has("STOPPING=1")
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()


def test_configured_model_that_cannot_load_fails_the_start(tmp_path):
    import shoal_test_models as m
    # a valid archive whose model fails its load-time self-check in the workers
    shoal.export(m.Noisy(), tmp_path / "bad.pt", example_inputs=(torch.ones(2),))
    listener = NotifyListener(str(tmp_path / "notify"))
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"))
    conf = tmp_path / "shoald.conf"
    conf.write_text(f"workers = 1\nmodel_repository = {tmp_path}\nmodel = bad=bad.pt\nadmin_group =\n")
    p = subprocess.run([SHOALD, "--config", str(conf), "--socket", str(tmp_path / "s.sock")], env=env,
                       capture_output=True, text=True, timeout=60)
    listener.pump(time.monotonic() + 0.5)
    assert p.returncode == 1
    assert "configured model 'bad' cannot be loaded" in p.stdout + p.stderr
    assert not listener.has("READY=1")
    assert listener.has("STATUS=model 'bad' failed to load")
    # a file that is not an archive at all is refused before anything starts
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    r = subprocess.run([SHOALD, "--socket", str(tmp_path / "s2.sock"), "--model", f"junk={tmp_path / 'junk.pt'}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "junk.pt: not a zip file" in r.stderr


def test_config_errors_are_reported(tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("workers = lots\n")
    r = subprocess.run([SHOALD, "--config", str(conf)], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{conf}:1: workers takes an integer" in r.stderr
    r = subprocess.run([SHOALD, "--admin-group", "no-such-group-xyz", "--socket", str(tmp_path / "s")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "admin_group 'no-such-group-xyz' does not exist" in r.stdout + r.stderr


PERM_DIR = "/tmp/shoal-perm-test"  # world-readable: the build tree may sit under /root


def _as_user(name, code):
    return subprocess.run(["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups",
                           "/usr/bin/env", f"PYTHONPATH={PERM_DIR}/python",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/tmp")


@needs(os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("useradd") is None,
       reason="needs root, setpriv and useradd to create a second user")
def test_unprivileged_user_can_infer_but_not_load(archives):
    uid = ensure_user("shoaltest")
    admin_uid = ensure_user("shoaltestadm", groups=["shoaltestadmins"])
    d = PERM_DIR
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    os.chmod(d, 0o755)
    shutil.copytree(os.path.join(BUILD, "python"), f"{d}/python")
    subprocess.run(["chmod", "-R", "a+rX", d], check=True)
    for name in ("add", "identity"):
        shutil.copy(archives[name], f"{d}/{name}.pt")
        os.chmod(f"{d}/{name}.pt", 0o644)
    sock = f"{d}/shoal.sock"
    log = open(f"{d}/log", "w")
    p = subprocess.Popen([SHOALD, "--socket", sock, "--workers", "1", "--admin-group", "shoaltestadmins"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_socket(sock)
        with shoal.Client(sock) as c:
            c.load("add", f"{d}/add.pt")
        r = _as_user("shoaltest", f"""
import shoal, torch
c = shoal.Client({sock!r})
print("infer", c.infer("add", torch.ones(2)).tolist())
print("status", len(c.status()["workers"]))
try:
    c.load("identity", {d!r} + "/identity.pt")
    print("LOADED")
except shoal.BadRequest as e:
    print("refused:", e)
""")
        assert r.returncode == 0, r.stderr
        assert "infer [3.0, 3.0]" in r.stdout
        assert "status 1" in r.stdout
        assert f"refused: load refused for uid {uid}" in r.stdout
        assert "members of group 'shoaltestadmins'" in r.stdout
        assert "LOADED" not in r.stdout
        # a member of the admin group (a supplementary group) may load
        r = _as_user("shoaltestadm", f"""
import shoal
c = shoal.Client({sock!r})
c.load("identity", {d!r} + "/identity.pt")
print("LOADED", [m["name"] for m in c.models()])
""")
        assert "LOADED ['add', 'identity']" in r.stdout, r.stdout + r.stderr
    finally:
        p.terminate()
        p.wait(30)
        log.close()
    text = open(f"{d}/log").read()
    refusals = [line for line in text.splitlines() if "refused load" in line]
    assert len(refusals) == 1 and f"uid {uid}" in refusals[0]  # logged, naming who
    assert f"uid {admin_uid}" not in refusals[0]


@needs(shutil.which("cpack") is None or shutil.which("dpkg-deb") is None, reason="cpack/dpkg-deb missing")
@needs(shoal._build_info.CARRIED_LIBS, reason="this build links a carried Boost.Program_options (scripts/gpu.sh): "
                                              "no package provides it, so a .deb could not depend on it")
def test_deb_installs_expected_files_and_they_work(tmp_path, archives):
    out = tmp_path / "pkg"
    r = subprocess.run(["cpack", "-G", "DEB", "-B", str(out)], cwd=BUILD, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    debs = list(out.glob("shoal_*.deb"))
    assert len(debs) == 1
    info = subprocess.run(["dpkg-deb", "--info", str(debs[0])], capture_output=True, text=True).stdout
    assert "python3-torch" in info and "Depends:" in info
    assert "postinst" in info and "conffiles" in info
    root = tmp_path / "root"
    subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True)
    files = {str(p.relative_to(root)) for p in root.rglob("*")}
    pydir = next(f for f in files if f.endswith("/shoal/client.py")).rsplit("/", 1)[0]
    libdir = next(f for f in files if f.endswith("libshoal_client.a")).rsplit("/", 1)[0]
    for f in ("usr/bin/shoald", "usr/bin/shoal-worker", "usr/bin/shoal-worker-py", f"{pydir}/_worker_host.so",
              "usr/bin/shoal", "usr/include/shoal/client.h",
              "usr/include/shoal/status.h", f"{libdir}/libshoal_core.a", f"{libdir}/cmake/shoal/shoalConfig.cmake",
              f"{pydir}/__init__.py", f"{pydir}/_worker.py", f"{pydir}/_native.so",
              "usr/lib/systemd/system/shoal.service", "usr/lib/systemd/system/shoal.socket",
              "usr/lib/sysusers.d/shoal.conf", "etc/shoal/shoald.conf", "var/lib/shoal/models"):
        assert f in files, f
    # The installed worker script finds shoal on its Python's own path, not in this build.
    script = (root / "usr/bin/shoal-worker-py").read_text()
    assert "sys.path.insert" not in script and "_worker_host" in script
    if shoal._build_info.MAN_PAGES:
        for f in ("usr/share/man/man8/shoald.8.gz", "usr/share/man/man5/shoald.conf.5.gz",
                  "usr/share/man/man1/shoal.1.gz"):
            assert f in files, f
    assert "/usr/bin/shoald --config /etc/shoal/shoald.conf" in (root / "usr/lib/systemd/system/shoal.service").read_text()
    # the unpacked daemon, worker, Python package and CLI serve a model
    env = dict(os.environ, PYTHONPATH=str(root / pydir.rsplit("/", 1)[0]), SHOAL_PYTHONPATH=str(root / pydir.rsplit("/", 1)[0]))
    sock = str(tmp_path / "deb.sock")
    p = subprocess.Popen([str(root / "usr/bin/shoald"), "--socket", sock, "--workers", "1",
                          "--model", f"add={archives['add']}"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        wait_socket(sock)
        time.sleep(0.5)
        import numpy as np
        np.save(tmp_path / "x.npy", np.ones(3, dtype=np.float32))
        deadline = time.time() + 60
        while True:
            r = subprocess.run([sys.executable, str(root / "usr/bin/shoal"), "--socket", sock,
                                "infer", "add", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy")],
                               env=env, capture_output=True, text=True)
            if r.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert r.returncode == 0, r.stderr
        assert np.load(tmp_path / "y.npy").tolist() == [3.0, 3.0, 3.0]
    finally:
        p.terminate()
        p.wait(30)
    # find_package(shoal) works from the unpacked tree
    proj = tmp_path / "consumer"
    proj.mkdir()
    (proj / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(consumer CXX)\nset(CMAKE_CXX_STANDARD 17)\n"
        "find_package(shoal REQUIRED)\nadd_executable(consumer main.cc)\n"
        "target_link_libraries(consumer PRIVATE shoal::client)\n")
    (proj / "main.cc").write_text(
        '#include <shoal/client.h>\n#include <iostream>\nint main(int argc, char** argv) {\n'
        '  auto c = shoal::Client::Connect(argv[1]);\n  std::cout << c.status().ToString() << std::endl;\n'
        '  return c.ok() ? 0 : 3;\n}\n')
    prefix = ";".join([str(root / "usr"), subprocess.run(
        [sys.executable, "-c", "import torch.utils; print(torch.utils.cmake_prefix_path)"],
        capture_output=True, text=True).stdout.strip()])
    r = subprocess.run(["cmake", "-S", str(proj), "-B", str(proj / "b"), f"-DCMAKE_PREFIX_PATH={prefix}"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["cmake", "--build", str(proj / "b"), "-j2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([str(proj / "b" / "consumer"), str(tmp_path / "none.sock")], capture_output=True, text=True)
    assert r.returncode == 3 and "UNAVAILABLE" in r.stdout
