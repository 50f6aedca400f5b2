"""Archives: manifest and self-check, `shoal package` / `inspect` / `--repack`,
TorchScript, and every kind of bad archive refused with an error that names the archive
and what is wrong, while the daemon keeps serving."""
import json
import time
import os
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch

import shoal
import shoal.tools
import shoal_test_models as models
from conftest import BUILD

SHOAL = os.path.join(BUILD, "bin", "shoal")


def rewrite(src, dst, drop=(), replace=None, extra=(), compress=zipfile.ZIP_STORED):
    """Copies an archive record by record, dropping, replacing or adding records."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        prefix = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            rel = info.filename[len(prefix):]
            if rel in drop:
                continue
            zout.writestr(info.filename, replace.get(rel, zin.read(info)), compress_type=compress)
        for name, data in extra:
            zout.writestr(name if name.startswith("/") or ".." in name else prefix + name, data)
    return dst


@pytest.fixture
def good(tmp_path):
    return shoal.export(models.BigWeights(1), tmp_path / "good.pt")


def assert_refused(daemon, path, code, needle):
    with daemon.client() as c:
        with pytest.raises(code) as e:
            c.load("m", path)
        assert str(path) in e.value.message, e.value.message  # names the archive
        assert needle in str(e.value), str(e.value)
        assert c.models() == []
        c.load("ok", shoal.export(models.AddConst(1.0), os.path.join(os.path.dirname(path), "ok.pt")))
        assert float(c.infer("ok", torch.zeros(1))[0]) == 1.0  # still serving
        c.unload("ok")


def test_truncated(daemon, good, tmp_path):
    data = open(good, "rb").read()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    assert_refused(daemon, path, shoal.BadRequest, "not a zip file")


def test_entry_pickle_missing(daemon, good, tmp_path):
    path = rewrite(good, tmp_path / "noentry.pt", drop={"model/model.pkl"})
    assert_refused(daemon, path, shoal.BadRequest, "no entry pickle model/model.pkl")


def test_pickle_references_a_missing_storage(daemon, good, tmp_path):
    path = tmp_path / "nostorage.pt"
    rewrite(good, tmp_path / "tmp.pt", drop={".data/1.storage"})
    shoal.tools.repack(tmp_path / "tmp.pt", path)  # aligned, so only the missing record is wrong
    assert_refused(daemon, path, shoal.BadRequest, "references storage .data/1.storage")


@pytest.mark.parametrize("name", ["../evil.py", "x/../../evil.py"])
def test_unsafe_record_names(daemon, good, tmp_path, name):
    path = rewrite(good, tmp_path / "unsafe.pt", extra=[(name, b"print('pwned')")])
    assert_refused(daemon, path, shoal.BadRequest, "is unsafe")


def test_absolute_record_name(daemon, good, tmp_path):
    path = tmp_path / "absolute.pt"
    rewrite(good, path)
    with open(path, "r+b") as f:  # zipfile strips a leading '/', so write one in by hand
        last_entry = f.read().rindex(b"PK\x01\x02")
        f.seek(last_entry + 46)
        f.write(b"/")  # the last record's name in the central directory now starts with '/'
    assert_refused(daemon, path, shoal.BadRequest, "is unsafe")


def test_duplicate_records(daemon, good, tmp_path):
    path = rewrite(good, tmp_path / "dup.pt", extra=[("model/model.pkl", b"junk")])
    assert_refused(daemon, path, shoal.BadRequest, "duplicate record")


def test_manifest_that_does_not_parse(daemon, tmp_path):
    src = shoal.export(models.AddConst(1.0), tmp_path / "m.pt")
    path = rewrite(src, tmp_path / "badmanifest.pt", replace={shoal.archive.MANIFEST: b"{not json"})
    path = shoal.tools.repack(path, tmp_path / "badmanifest2.pt") and tmp_path / "badmanifest2.pt"
    assert_refused(daemon, path, shoal.BadRequest, "_shoal/manifest.json does not parse: it expects a string at byte 1")


def test_manifest_that_contradicts_the_archive(daemon, tmp_path):
    src = shoal.export(models.AddConst(1.0), tmp_path / "m.pt")
    manifest = {"format": 1, "name": "m", "version": "1", "entry": "model/other.pkl", "inputs": [], "outputs": []}
    path = rewrite(src, tmp_path / "contra.pt", replace={shoal.archive.MANIFEST: json.dumps(manifest).encode()})
    path = shoal.tools.repack(path, tmp_path / "contra2.pt") and tmp_path / "contra2.pt"
    assert_refused(daemon, path, shoal.BadRequest, "names entry 'model/other.pkl'")


def test_interned_module_that_fails_to_import(daemon, tmp_path):
    mod = tmp_path / "refuses_in_package.py"
    mod.write_text(
        "import torch\n"
        "if __name__.startswith('<torch_package'):\n"
        "    raise RuntimeError('this module refuses to be imported from an archive')\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return x\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import refuses_in_package
        path = shoal.export(refuses_in_package.M(), tmp_path / "refuses.pt")
    finally:
        sys.path.remove(str(tmp_path))
    assert_refused(daemon, path, shoal.ModelError, "this module refuses to be imported")
    with daemon.client() as c:
        with pytest.raises(shoal.ModelError) as e:
            c.load("m", path)
        assert "Traceback" in e.value.traceback and "RuntimeError" in e.value.traceback


def test_model_that_fails_its_self_check(daemon, tmp_path):
    path = shoal.export(models.Noisy(), tmp_path / "noisy.pt", example_inputs=(torch.ones(2, 3),))
    assert_refused(daemon, path, shoal.ModelError, "self-check failed")


def test_manifest_specs_and_self_check_pass(daemon, tmp_path):
    path = shoal.export(models.AddConst(1.0), tmp_path / "add.pt", name="adder", version="7",
                        example_inputs=(torch.ones(2, 4),))
    with daemon.client() as c:
        c.load("adder", path)  # the self-check runs and passes
        assert torch.equal(c.infer("adder", torch.zeros(5, 4)), torch.ones(5, 4))  # batch is dynamic
        with pytest.raises(shoal.BadRequest, match=r"input 0 must be float32\[\*, 4\], got float32\[5, 3\]"):
            c.infer("adder", torch.zeros(5, 3))
        with pytest.raises(shoal.BadRequest, match="takes 1 inputs"):
            c.infer("adder", torch.zeros(1, 4), torch.zeros(1, 4))


def test_torchscript_archives_are_served(daemon, tmp_path):
    net = models.ScriptableMLP().eval()
    path = tmp_path / "mlp_ts.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    x = torch.randn(3, 8)
    with daemon.client() as c:
        c.load("ts", path)
        with torch.no_grad():
            assert float((c.infer("ts", x) - net(x)).abs().max()) <= 1e-5
        # run by libtorch in the worker's C++ loop, not by the Python runner
        assert c.models()[0]["engine"] == "libtorch"
        xa = c.empty((2, 8))
        xa.normal_()
        with torch.no_grad():
            assert float((c.infer("ts", xa) - net(xa)).abs().max()) <= 1e-5
        with pytest.raises(shoal.ModelError, match="'ts' raised"):
            c.infer("ts", torch.zeros(2, 5))  # wrong width: TorchScript's own error
        c.load("py", shoal.export(models.AddConst(1.0), tmp_path / "py.pt"))
        assert {m["name"]: m["engine"] for m in c.models()} == {"ts": "libtorch", "py": "python"}
        c.unload("ts")
        assert [m["name"] for m in c.models()] == ["py"]


def test_a_torchscript_models_error_reads_as_its_own_message(daemon, tmp_path):
    """The message is the model's error; TorchScript's report is the traceback; libtorch's
    C++ frames are in neither."""
    path = tmp_path / "raises_ts.pt"
    torch.jit.save(torch.jit.script(models.RaisesWhenPositive()), str(path))
    with daemon.client() as c:
        c.load("raises", path)
        assert torch.equal(c.infer("raises", -torch.ones(2)), -torch.ones(2))
        with pytest.raises(shoal.ModelError) as e:
            c.infer("raises", torch.ones(2))
    assert e.value.message.startswith("model 'raises' raised in job ")
    assert e.value.message.endswith("ValueError: the input must not be positive"), e.value.message
    assert len(e.value.message) < 200, e.value.message
    assert "Traceback of TorchScript" in e.value.traceback
    assert "Exception raised from" not in str(e.value)


def run(*args):
    return subprocess.run([SHOAL, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_package_inspect_and_serve(daemon, tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "tiny_classifier.py")
    np.save(tmp_path / "x.npy", np.ones((2, 8), dtype=np.float32))
    out = tmp_path / "tiny.pt"
    r = run("package", f"{example}:make_model", "-o", out, "--name", "tiny", "--version", "2",
            "--example-input", tmp_path / "x.npy")
    assert r.returncode == 0, r.stderr
    r = run("inspect", out, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["servable"] and info["kind"] == "torch.package"
    assert info["manifest"]["name"] == "tiny" and info["manifest"]["version"] == "2"
    assert info["manifest"]["inputs"][0] == {"dtype": "float32", "shape": [None, 8], "name": "input0"}
    assert info["manifest"]["example"] == "_shoal/example.pkl"
    assert "tiny_classifier" in info["interned_modules"] and "torch" in info["extern_modules"]
    # 4 weights + the example input + the reference output
    assert info["storages"]["count"] == 6 and info["storages"]["dtypes"] == {"float32": 6}
    text = run("inspect", out).stdout
    assert "servable  yes" in text and "float32[*, 8]" in text
    with daemon.client() as c:
        c.load("tiny", out)
        y = c.infer("tiny", np.ones((2, 8), dtype=np.float32))
        assert y["probs"].shape == (2, 3) and len(y["top"]) == 2


def test_cli_repack_makes_a_compressed_archive_servable(daemon, good, tmp_path):
    bad = rewrite(good, tmp_path / "compressed.pt", compress=zipfile.ZIP_DEFLATED)
    r = run("inspect", bad)
    assert r.returncode == 1 and "servable  NO" in r.stdout and "is compressed" in r.stdout
    fixed = tmp_path / "fixed.pt"
    r = run("package", "--repack", bad, "-o", fixed)
    assert r.returncode == 0 and "servable: yes" in r.stdout, r.stdout + r.stderr
    with daemon.client() as c:
        c.load("fixed", fixed)
        net = models.BigWeights(1)
        x = torch.randn(1, net.n)
        with torch.no_grad():
            assert float((c.infer("fixed", x) - net(x)).abs().max()) <= 1e-4


def test_cli_package_reports_a_broken_factory(tmp_path):
    src = tmp_path / "broken.py"
    src.write_text("def make():\n    raise ValueError('no model today')\n")
    r = run("package", f"{src}:make", "-o", tmp_path / "x.pt")
    assert r.returncode == 2 and "no model today" in r.stderr
    r = run("package", f"{src}:nope", "-o", tmp_path / "x.pt")
    assert r.returncode == 2 and "has no function 'nope'" in r.stderr


def test_versions_newest_serves_and_old_ones_stay_addressable(daemon, archives, tmp_path):
    v1 = shoal.export(models.AddConst(1.0), tmp_path / "v1.pt")
    v2 = shoal.export(models.AddConst(10.0), tmp_path / "v2.pt")
    with daemon.client() as c:
        c.load("m:1", v1)
        assert float(c.infer("m", torch.zeros(1))[0]) == 1.0
        c.load("m:2", v2)
        assert float(c.infer("m", torch.zeros(1))[0]) == 10.0  # plain name: the newest
        assert float(c.infer("m:1", torch.zeros(1))[0]) == 1.0
        assert sorted(x["name"] for x in c.models()) == ["m:1", "m:2"]
        with pytest.raises(shoal.ModelNotFound):
            c.infer("m:3", torch.zeros(1))
        with pytest.raises(shoal.BadRequest, match="NAME:VERSION"):
            c.load("m:2:x", v1)
        c.unload("m:2")
        assert float(c.infer("m", torch.zeros(1))[0]) == 1.0  # back to the remaining version
        c.unload("m")  # a plain name unloads every version
        assert c.models() == []


def test_loading_a_new_version_switches_atomically(daemon, tmp_path):
    v1 = shoal.export(models.AddConst(10.0), tmp_path / "v1.pt")
    v2 = shoal.export(models.SlowLoad(1.0), tmp_path / "v2.pt")  # x + 1, takes a second to load
    seen, errors, stop = [], [], __import__("threading").Event()

    def ask():
        with daemon.client() as c:
            while not stop.is_set():
                try:
                    seen.append(float(c.infer("m", torch.zeros(1))[0]))
                except shoal.Error as e:
                    errors.append(e)
    with daemon.client() as c:
        c.load("m:1", v1)
        import threading
        t = threading.Thread(target=ask)
        t.start()
        c.load("m:2", v2)  # while v1 serves
        time.sleep(0.3)
        stop.set()
        t.join(30)
    assert errors == []
    assert set(seen) == {10.0, 1.0}
    switched = seen.index(1.0)
    assert all(v == 10.0 for v in seen[:switched]) and all(v == 1.0 for v in seen[switched:])


def test_unload_waits_for_accepted_jobs_then_answers_the_rest(make_daemon, archives, tmp_path):
    conf = tmp_path / "shoald.conf"
    conf.write_text("admin_group =\nunload_grace_ms = 300\n")
    d = make_daemon(workers=1, args=["--config", str(conf)])
    results = {}

    def ask(key, seconds):
        with d.client() as c:
            try:
                results[key] = float(c.infer("s:1", torch.tensor([seconds]))[0])
            except shoal.Error as e:
                results[key] = e
    import threading
    with d.client() as c:
        c.load("s:1", archives["sleeps"])
        running = threading.Thread(target=ask, args=("running", 1.0))
        running.start()
        time.sleep(0.3)
        queued = threading.Thread(target=ask, args=("queued", 0.0))
        queued.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        c.unload("s:1")
        waited = time.monotonic() - t0
        running.join(10)
        queued.join(10)
        assert results["running"] == 1.0  # the job it was running finished normally
        assert isinstance(results["queued"], shoal.Unavailable)
        assert "grace period" in results["queued"].message
        assert waited >= 0.25
        with pytest.raises(shoal.ModelNotFound):
            c.infer("s:1", torch.tensor([0.0]))


def test_a_model_whose_code_imports_shoal_exports_loads_and_serves(daemon, tmp_path):
    import uses_shoal
    path = shoal.export(uses_shoal.UsesShoal(), tmp_path / "uses.pt", example_inputs=[torch.ones(2)])
    with daemon.client() as c:
        c.load("uses", str(path))  # the self-check runs the example in the worker
        assert torch.equal(c.infer("uses", torch.zeros(3), timeout=30), torch.ones(3))


def test_torch_packages_own_importer_opens_an_archive_whose_code_imports_shoal(tmp_path):
    """shoal.export writes a torch.package zip: torch's PackageImporter opens it, also when
    the model's code imports shoal (shoal is extern then, and torch.package refuses files
    in an extern module's folder, where the manifest was until 2026-12-07)."""
    import uses_shoal
    from torch.package import PackageImporter
    path = shoal.export(uses_shoal.UsesShoal(), tmp_path / "uses.pt", example_inputs=[torch.ones(2)])
    assert "shoal" in zipfile.ZipFile(path).read("uses/.data/extern_modules").decode().split("\n")
    model = PackageImporter(str(path)).load_pickle("model", "model.pkl")
    assert torch.equal(model(torch.zeros(3)), torch.ones(3))


def _old_layout(src, dst):
    """``src`` as exports before 2026-12-07 wrote it: the manifest and the example in
    shoal/, the manifest naming shoal/example.pkl."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        prefix = zin.namelist()[0].split("/", 1)[0] + "/"
        for info in zin.infolist():
            rel, data = info.filename[len(prefix):], zin.read(info)
            if rel == shoal.archive.MANIFEST:
                manifest = json.loads(data)
                if manifest.get("example"):
                    manifest["example"] = shoal.archive.OLD_EXAMPLE
                rel, data = shoal.archive.OLD_MANIFEST, json.dumps(manifest).encode()
            elif rel == shoal.archive.EXAMPLE:
                rel = shoal.archive.OLD_EXAMPLE
            zout.writestr(prefix + rel, data)
    return shoal.tools.repack(dst, str(dst) + ".repacked") and str(dst) + ".repacked"


def test_archives_exported_before_the_manifest_moved_still_load_with_their_manifest(daemon, tmp_path):
    import uses_shoal
    new = shoal.export(models.AddConst(1.0), tmp_path / "add.pt", example_inputs=(torch.ones(2, 4),),
                       batching={"max_batch": 4, "max_delay_us": 1000})
    old = _old_layout(new, tmp_path / "old.pt")
    names = [n.split("/", 1)[1] for n in zipfile.ZipFile(old).namelist()]
    assert shoal.archive.OLD_MANIFEST in names and shoal.archive.MANIFEST not in names
    info = json.loads(run("inspect", old, "--json").stdout)
    assert info["servable"] and info["manifest"]["example"] == shoal.archive.OLD_EXAMPLE
    # Python reads it (the self-check runs from shoal/example.pkl) ...
    assert torch.equal(shoal.archive.load(old)(torch.zeros(1, 4)), torch.ones(1, 4))
    # ... and so does shoald: the manifest's batching and input specs hold.
    with daemon.client() as c:
        c.load("old", old)
        (m,) = [m for m in c.models() if m["name"] == "old"]
        assert m["batching"]["max_batch"] == 4
        with pytest.raises(shoal.BadRequest, match=r"input 0 must be float32\[\*, 4\]"):
            c.infer("old", torch.zeros(5, 3))
        assert torch.equal(c.infer("old", torch.zeros(2, 4)), torch.ones(2, 4))
        # A model whose code imports shoal, in the old layout (shoal's importer skips the
        # manifest's folder there).
        c.load("uses", _old_layout(shoal.export(uses_shoal.UsesShoal(), tmp_path / "uses.pt",
                                                example_inputs=[torch.ones(2)]), tmp_path / "uses-old.pt"))
        assert torch.equal(c.infer("uses", torch.zeros(3), timeout=30), torch.ones(3))


class _Storage:
    def __init__(self, key, location):
        self.key, self.location = key, location


class _TensorPickler(__import__("pickle").Pickler):
    """Writes _Storage objects as torch's tensor pickles do: a persistent id
    ('storage', type, key, location, numel)."""
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", torch.FloatStorage, obj.key, obj.location, 4)
        return None


def _tensor_pickle(obj, protocol):
    import io
    buf = io.BytesIO()
    _TensorPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


@pytest.mark.parametrize("protocol", [2, 4])
def test_only_a_storage_location_makes_a_torchscript_archive_cuda(protocol):
    """The device a TorchScript archive was saved from is read from its storages'
    locations (PickleNamesCuda): a string "cuda" elsewhere says nothing; a location torch
    wrote once and then fetched from the memo still counts."""
    from shoal import _native
    loc = "cuda:1"  # one object: the pickler writes it once, then refers to the memo
    cases = {
        "cpu storages, a 'cuda' attribute": ({"device": "cuda", "also": "cuda:0"}, [_Storage("0", "cpu")]),
        "a 'cuda' string in another persistent-id-like tuple": (("module", "cuda", "x", "cuda:0"),
                                                                [_Storage("0", "cpu")]),
    }
    for why, (attrs, storages) in cases.items():
        assert not _native.pickle_names_cuda(_tensor_pickle((attrs, storages), protocol)), why
    assert _native.pickle_names_cuda(_tensor_pickle([_Storage("0", "cpu"), _Storage("1", "cuda:0")], protocol))
    assert _native.pickle_names_cuda(_tensor_pickle([_Storage("0", "cuda"), _Storage("1", "cpu")], protocol))
    # The location string first appears as an attribute; the storage then fetches it.
    assert _native.pickle_names_cuda(_tensor_pickle(({"where": loc}, [_Storage("0", loc)]), protocol))
    assert _native.pickle_names_cuda(_tensor_pickle([_Storage("0", loc), _Storage("1", loc)], protocol))


def test_a_torchscript_archive_saved_on_the_cpu_is_cpu_whatever_its_strings_say(tmp_path):
    from shoal import archive

    class Labelled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.device_name = "cuda"
            self.other = "cuda:0"
            self.w = torch.nn.Parameter(torch.ones(2))

        def forward(self, x):
            return x * self.w

    path = tmp_path / "labelled.pt"
    torch.jit.save(torch.jit.script(Labelled()), str(path))
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))
    assert b"cuda" in data  # the strings are there...
    assert archive.saved_on_cuda(path) is False  # ...and do not make it a CUDA archive


def test_a_pickle_that_duplicates_a_storage_id_does_not_blow_up_the_reader():
    """The reader keeps a few bytes per value and a bounded number of values: a small
    pickle that duplicates a long tuple millions of times (DUP, or BINPUT/BINGET through the
    memo) is answered without growing memory by the copies (once ~0.7 KiB each)."""
    probe = r'''
import pickle, resource, sys
from shoal import _native
t = ("storage", "x" * 32, "y" * 32, "cuda:0" + "z" * 26, "w" * 32, "v" * 32, "u" * 32, "s" * 32)
head = b"\x80\x02" + pickle.dumps(t, protocol=2)[2:-1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
dup = _native.pickle_names_cuda(head + b"2" * 1_500_000 + b".")
memo = _native.pickle_names_cuda(head + b"q\x00" + b"h\x00" * 1_500_000 + b".")
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(dup, memo, grown)
'''
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    assert out[:2] == ["False", "False"]
    assert int(out[2]) < 200 * 1024, f"the reader grew by {int(out[2]) // 1024} MiB"


def test_a_model_that_imports_standard_modules_exports_and_serves(daemon, tmp_path, monkeypatch):
    """`import sys` (a built-in module: no source) made export fail; standard modules are
    now the serving interpreter's (extern), so none of them is copied into the archive."""
    src = tmp_path / "uses_stdlib"
    src.mkdir()
    (src / "stdlib_model.py").write_text(
        "import collections\nimport math\nimport os\nimport sys\nimport torch\n\n"
        "class UsesStdlib(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        Pair = collections.namedtuple('Pair', 'a b')\n"
        "        p = Pair(2.0 if sys.byteorder in ('little', 'big') else 0.0, math.sqrt(len(os.sep)))\n"
        "        return x * p.a + p.b\n")
    monkeypatch.syspath_prepend(str(src))
    import stdlib_model
    path = shoal.export(stdlib_model.UsesStdlib(), tmp_path / "stdlib.pt")
    with zipfile.ZipFile(path) as z:
        sources = [n.split("/", 1)[1] for n in z.namelist() if n.endswith(".py")]
    assert sources == ["stdlib_model.py"], sources
    with daemon.client() as c:
        c.load("stdlib", path)
        assert torch.equal(c.infer("stdlib", torch.ones(3)), torch.full((3,), 3.0))


def _dynamic_quantized(engine):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).eval()
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        q = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
        x = torch.randn(4, 64)
        return q, x, q(x)
    finally:
        torch.backends.quantized.engine = before


@pytest.mark.skipif(len([e for e in torch.backends.quantized.supported_engines if e != "none"]) < 2,
                    reason="needs two quantized engines")
def test_a_quantized_model_runs_with_the_engine_it_was_made_for(daemon, tmp_path):
    """Packed weights compute differently per quantized engine: a model quantized with a
    non-default engine is served with that engine (its manifest names it), packaged or
    TorchScript, and equals eager there."""
    default = torch.backends.quantized.engine
    other = next(e for e in torch.backends.quantized.supported_engines if e not in ("none", default))
    q, x, expected = _dynamic_quantized(other)
    _, _, with_default = _dynamic_quantized(default)
    assert not torch.equal(expected, with_default), "the engines agree here: nothing to test"
    torch.backends.quantized.engine = other
    try:
        pkg = shoal.export(q, tmp_path / "q.pt")  # records this process's engine
        ts = tmp_path / "q_ts.pt"
        torch.jit.save(torch.jit.trace(q, x), str(ts), _extra_files=shoal.torchscript_manifest(quantized_engine=other))
    finally:
        torch.backends.quantized.engine = default
    bad = tmp_path / "q_bad.pt"
    torch.jit.save(torch.jit.trace(q, x), str(bad), _extra_files=shoal.torchscript_manifest(quantized_engine="nope"))
    with daemon.client() as c:
        c.load("q", pkg)
        c.load("q_ts", ts)
        assert torch.equal(c.infer("q", x), expected)
        assert torch.equal(c.infer("q_ts", x), expected)
        with pytest.raises(shoal.errors.BadRequest, match="quantized engine 'nope'"):
            c.load("q_bad", bad)


def test_named_tuples_come_back_as_named_tuples(daemon, tmp_path):
    """collections.namedtuple and typing.NamedTuple outputs keep their names and fields,
    from a packaged model and from TorchScript (where only typing.NamedTuple exists)."""
    class Scripted(torch.nn.Module):
        def forward(self, x):
            return models.Detection(x + 1, 0.5)

    pkg = shoal.export(models.ReturnsNamedTuples(), tmp_path / "nt.pt")
    ts = tmp_path / "nt_ts.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(ts))
    x = torch.arange(3.0)
    with daemon.client() as c:
        c.load("nt", pkg)
        c.load("nt_ts", ts)
        out = c.infer("nt", x)
        assert type(out).__name__ == "Pair" and out._fields == ("scores", "labels")
        assert torch.equal(out.scores, x * 2)
        assert type(out.labels).__name__ == "Detection" and out.labels._fields == ("boxes", "score")
        assert torch.equal(out.labels.boxes, x + 1) and out.labels.score == 0.5
        d = c.infer("nt_ts", x)
        assert type(d).__name__ == "Detection" and d._fields == ("boxes", "score")
        assert torch.equal(d.boxes, x + 1) and d.score == 0.5
