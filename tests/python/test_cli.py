"""The `shoal` command against a real shoald."""
import os
import subprocess

import numpy as np
import torch
from torch.package import PackageExporter

from shoal import export

import multipy_style
import shoal_test_models as models
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


def test_npz_names_become_keyword_arguments(daemon, tmp_path):
    export(models.KeywordEncoder(), tmp_path / "enc.pt")
    assert shoal(daemon, "load", "enc", str(tmp_path / "enc.pt")).returncode == 0
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.int64)
    want = models.KeywordEncoder()(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), scale=3.0)
    np.save(tmp_path / "ids.npy", ids)
    np.savez(tmp_path / "mask.npz", attention_mask=mask, scale=np.float64(3.0))
    np.savez(tmp_path / "all.npz", ids, attention_mask=mask, scale=np.float64(3.0))  # ids: numpy's arr_0
    for inputs in (["ids.npy", "mask.npz"], ["all.npz"]):
        out = tmp_path / "out.npz"
        r = shoal(daemon, "infer", "enc", *[str(tmp_path / i) for i in inputs], "-o", str(out))
        assert r.returncode == 0, r.stderr
        got = np.load(out)
        assert np.array_equal(got["pooled"], want["pooled"].numpy()), inputs
        assert np.array_equal(got["last_hidden_state"], want["last_hidden_state"].numpy()), inputs
    # without the mask: its default (every position counts)
    r = shoal(daemon, "infer", "enc", str(tmp_path / "ids.npy"), "-o", str(tmp_path / "plain.npz"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "plain.npz")["pooled"], ids.sum(-1).astype(np.float32))
    r = shoal(daemon, "infer", "enc", str(tmp_path / "all.npz"), str(tmp_path / "mask.npz"))
    assert r.returncode == 2 and "keyword argument 'attention_mask' is given by an earlier .npz too" in r.stderr


def test_load_entry_and_methods_and_infer_method(daemon, tmp_path):
    scorer = multipy_style.Scorer(torch.arange(3.0))
    with PackageExporter(str(tmp_path / "scorer.pt")) as e:
        e.intern("**")
        e.save_pickle("scorer", "scorer.pkl", scorer)
    r = shoal(daemon, "load", "s", str(tmp_path / "scorer.pt"))
    assert r.returncode == 1 and "scorer/scorer.pkl" in r.stderr  # says which entry to name
    r = shoal(daemon, "load", "s", str(tmp_path / "scorer.pt"), "--entry", "scorer/scorer.pkl", "--methods", "score")
    assert r.returncode == 0, r.stderr
    np.savez(tmp_path / "x.npz", np.ones((2, 3), dtype=np.float32), scale=np.float64(2.0))
    r = shoal(daemon, "infer", "s", str(tmp_path / "x.npz"), "--method", "score", "-o", str(tmp_path / "y.npz"))
    assert r.returncode == 0, r.stderr
    assert np.array_equal(np.load(tmp_path / "y.npz")["score"], np.full(2, 6.0, dtype=np.float32))
    r = shoal(daemon, "infer", "s", str(tmp_path / "x.npz"), "--method", "other")
    assert r.returncode == 1 and "shoal load --methods other" in r.stderr
