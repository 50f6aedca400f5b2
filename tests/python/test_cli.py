"""The `shoal` command against a real shoald."""
import os
import subprocess

import numpy as np

from conftest import BUILD


def shoal(daemon, *args):
    return subprocess.run([os.path.join(BUILD, "bin", "shoal"), "--socket", daemon.socket, *args],
                          capture_output=True, text=True, timeout=120)


def test_load_models_infer_unload(daemon, archives, tmp_path):
    r = shoal(daemon, "load", "add", str(archives["add"]))
    assert r.returncode == 0, r.stderr
    r = shoal(daemon, "models")
    assert r.stdout.startswith("add\tready")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    r = shoal(daemon, "infer", "add", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npy"))
    assert r.returncode == 0, r.stderr
    assert "shape=[2, 3]" in r.stdout
    assert np.array_equal(np.load(tmp_path / "y.npy"), x * 2 + 1)
    assert '"workers"' in shoal(daemon, "status").stdout
    assert shoal(daemon, "unload", "add").returncode == 0
    r = shoal(daemon, "infer", "add", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "ModelNotFound" in r.stderr


def test_structured_output_goes_to_npz(daemon, archives, tmp_path):
    shoal(daemon, "load", "branchy", str(archives["branchy"]))
    np.save(tmp_path / "x.npy", np.ones((2, 16), dtype=np.float32))
    r = shoal(daemon, "infer", "branchy", str(tmp_path / "x.npy"), "-o", str(tmp_path / "y.npz"))
    assert r.returncode == 0, r.stderr
    z = np.load(tmp_path / "y.npz")
    assert z["logits"].shape == (2, 4)
    assert "extra.0" in z.files


def test_clear_errors(daemon, tmp_path):
    r = shoal(daemon, "infer", "m", str(tmp_path / "missing.npy"))
    assert r.returncode == 2 and "cannot read input" in r.stderr
    r = subprocess.run([os.path.join(BUILD, "bin", "shoal"), "--socket", str(tmp_path / "none.sock"), "models"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "is shoald running?" in r.stderr
