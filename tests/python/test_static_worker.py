"""shoal-worker-static: with one interpreter per worker shoald runs the worker build that
has Python linked in from the static libpython (CMakeLists.txt; docs/architecture.md,
"Workers and the zygote"), and the ordinary shoal-worker for several. Every other test with
one interpreter runs on it; these check the choice and that its Python is the static one."""
import os

import pytest
import torch

from conftest import BUILD, Daemon
from test_interpreters import interpreters_supported, needs_k  # noqa: F401 (fixtures)

STATIC = os.path.join(BUILD, "bin", "shoal-worker-static")

pytestmark = pytest.mark.skipif(not os.path.exists(STATIC),
                                reason="this build has no shoal-worker-static (no static libpython)")


def worker_exes(d):
    with d.client() as c:
        return [os.readlink(f"/proc/{w['pid']}/exe") for w in c.status()["workers"]]


def test_one_interpreter_runs_the_static_build_and_serves(tmp_path, archives):
    d = Daemon(tmp_path, workers=1)
    try:
        with d.client() as c:
            c.load("add", archives["add"])
            assert torch.equal(c.infer("add", torch.zeros(3)), torch.ones(3))
            (exe,) = worker_exes(d)
            assert os.path.basename(exe) == "shoal-worker-static"
            # Python's symbols are the executable's own: no shared libpython was loaded.
            pid = c.status()["workers"][0]["pid"]
            maps = open(f"/proc/{pid}/maps").read()
            assert "libpython" not in maps
    finally:
        d.stop()


def serve_add_and_exe(tmp_path, archives, args):
    """A one-worker shoald with `args` serves the add model; the worker's executable's name."""
    d = Daemon(tmp_path, workers=1, args=args)
    try:
        with d.client() as c:
            c.load("add", archives["add"])
            assert torch.equal(c.infer("add", torch.zeros(3)), torch.ones(3))
        (exe,) = worker_exes(d)
        return os.path.basename(exe)
    finally:
        d.stop()


def test_a_worker_binary_given_is_used_as_it_is(tmp_path, archives):
    assert serve_add_and_exe(tmp_path, archives,
                             ["--worker-binary", os.path.join(BUILD, "bin", "shoal-worker")]) == "shoal-worker"


def test_several_interpreters_run_shoal_worker(tmp_path, archives, needs_k):
    args = ["--interpreters", "2", "--interpreter-cache", str(tmp_path / "cache")]
    assert serve_add_and_exe(tmp_path, archives, args) == "shoal-worker"
