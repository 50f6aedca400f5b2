"""shoal-worker-py: with one interpreter per worker shoald runs the worker on the python3
executable itself (the extension module shoal._worker_host, CMakeLists.txt;
docs/architecture.md, "Workers and the zygote"), and shoal-worker for several. Every other
test with one interpreter runs on it; these check the choice, that its Python is the
executable's own, that it is sandboxed like shoal-worker, and that its signals are the
defaults an embedded interpreter has."""
import os
import signal
import subprocess
import sysconfig

import pytest
import torch

import shoal
import shoal._build_info

from conftest import BUILD, Daemon
from test_interpreters import interpreters_supported, needs_k  # noqa: F401 (fixtures)

PY_WORKER = os.path.join(BUILD, "bin", "shoal-worker-py")


def python_of_script():
    with open(PY_WORKER) as f:
        return f.readline()[2:].strip()


def worker_pids(d):
    with d.client() as c:
        return [w["pid"] for w in c.status()["workers"]]


def serve_add(tmp_path, archives, args=()):
    """A one-worker shoald with `args` that serves the add model; its worker's pid and exe."""
    d = Daemon(tmp_path, workers=1, args=list(args))
    with d.client() as c:
        c.load("add", archives["add"])
        assert torch.equal(c.infer("add", torch.zeros(3)), torch.ones(3))
    (pid,) = worker_pids(d)
    return d, pid, os.readlink(f"/proc/{pid}/exe")


def test_one_interpreter_runs_on_the_python_executable_and_serves(tmp_path, archives):
    d, pid, exe = serve_add(tmp_path, archives)
    try:
        assert os.path.realpath(exe) == os.path.realpath(python_of_script())
        maps = open(f"/proc/{pid}/maps").read()
        assert "_worker_host" in maps
        # Python is the executable's own: shoal's embedding glue (libshoal_pyhost) and, where
        # that Python is not itself built on one, the shared libpython were not loaded.
        assert "libshoal_pyhost" not in maps
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            assert "libpython" not in maps
        status = open(f"/proc/{pid}/status").read()
        if shoal._build_info.SECCOMP:  # the same sandbox as shoal-worker
            assert "Seccomp:\t2" in status
        # python3 ignores SIGPIPE and handles SIGINT; a worker has the defaults.
        sig_ign = int(next(l for l in status.splitlines() if l.startswith("SigIgn:")).split()[1], 16)
        sig_cgt = int(next(l for l in status.splitlines() if l.startswith("SigCgt:")).split()[1], 16)
        for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT):
            assert not sig_ign & (1 << (s - 1)) and not sig_cgt & (1 << (s - 1)), s
    finally:
        d.stop()


def test_a_worker_binary_given_is_used_as_it_is(tmp_path, archives):
    d, _, exe = serve_add(tmp_path, archives, ["--worker-binary", os.path.join(BUILD, "bin", "shoal-worker")])
    d.stop()
    assert os.path.basename(exe) == "shoal-worker"


def test_several_interpreters_run_shoal_worker(tmp_path, archives, needs_k):
    d, _, exe = serve_add(tmp_path, archives, ["--interpreters", "2", "--interpreter-cache", str(tmp_path / "cache")])
    d.stop()
    assert os.path.basename(exe) == "shoal-worker"


def test_the_script_runs_the_workers_command_line(tmp_path):
    """Its own options as shoal-worker's: a bad command line is refused the same way."""
    out = subprocess.run([PY_WORKER, "--no-such-option", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown option --no-such-option" in out.stderr
    out = subprocess.run([PY_WORKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "started by shoald" in out.stderr


def test_run_again_as_a_module_it_does_nothing(tmp_path):
    """multiprocessing's spawn and forkserver run the parent's __main__ file again in the
    child (as __mp_main__, with the parent's argv): that must not become a second worker."""
    code = ("import runpy, sys; sys.argv = [sys.argv[1], '--fd', '0', '--slot', '0']; "
            "runpy.run_path(sys.argv[0], run_name='__mp_main__'); print('returned')")
    out = subprocess.run([python_of_script(), "-c", code, PY_WORKER], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "returned", out.stderr


def test_a_start_up_check_that_fails_ends_cleanly(tmp_path):
    """--check-interpreters 2 without a cache starts one interpreter (its GIL given away),
    then fails: the process ends with the check's code, not a fatal error of Python's."""
    out = subprocess.run([PY_WORKER, "--check-interpreters", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "Fatal Python error" not in out.stderr and "one interpreter" in out.stderr


def test_gpu_discovery_does_not_start_torch():
    """shoald asks its worker binary --list-gpus at every start: the script hands that to
    shoal-worker, so the answer is the same and no Python module of torch is imported."""
    want = subprocess.run([os.path.join(BUILD, "bin", "shoal-worker"), "--list-gpus"], capture_output=True,
                          text=True, timeout=120)
    got = subprocess.run([python_of_script(), "-X", "importtime", PY_WORKER, "--list-gpus"], capture_output=True,
                         text=True, timeout=120)
    assert got.returncode == 0 == want.returncode and got.stdout == want.stdout
    assert "torch" not in got.stderr
