"""MultiPy / torch::deploy packages load unchanged (docs/protocol.md, "load"): packages
written with torch.package's PackageExporter the way MultiPy's examples write them, served
from model/model.pkl or from the pickle a load names (``entry``, MultiPy's
``load_pickle(package, resource)``); methods besides forward are called only when the load
or the manifest allows them; entries that leave the archive, are missing or are not
pickles are refused with errors that say what the archive holds."""
import pytest
import torch
from torch.package import PackageExporter

import shoal

import multipy_style as models


def package(path, pickles):
    """A torch.package archive as MultiPy's generate_examples writes one: everything
    interned, each object of ``pickles`` saved with save_pickle under its "package/resource"
    ("a/b/c.pkl": package "a.b")."""
    with PackageExporter(str(path)) as e:
        e.intern("**")
        for key, obj in pickles.items():
            pkg, resource = key.rsplit("/", 1)
            e.save_pickle(pkg.replace("/", "."), resource, obj)
    return path


@pytest.fixture(scope="module")
def multipy(tmp_path_factory):
    """{name: archive}: MultiPy-style packages of the test models."""
    out = tmp_path_factory.mktemp("multipy")
    predictor = models.PairPredictor()
    return {
        # the torch::deploy convention, a tuple-input model
        "pairs": package(out / "pairs.pt", {"model/model.pkl": models.PairInPairsOut()}),
        # the served object at another resource, beside a model/model.pkl and an example
        "two": package(out / "two.pt", {"model/model.pkl": models.Shift(1.0), "fn/fn.pkl": models.Shift(5.0),
                                        "model/example.pkl": (torch.ones(2),), "a/b/c.pkl": predictor}),
        # no model/model.pkl at all
        "predictor": package(out / "predictor.pt", {"predictor/predictor.pkl": predictor}),
        "scorer": package(out / "scorer.pt", {"scorer/scorer.pkl": models.Scorer(torch.arange(3.0))}),
    }


def test_a_tuple_input_package_serves_as_it_runs_in_process(daemon, multipy):
    with daemon.client() as c:
        c.load("pairs", multipy["pairs"])
        values = torch.rand(4, 1)
        mask = torch.tensor([[True], [False], [True], [False]])
        out = c.infer("pairs", (values, mask))
        want = models.PairInPairsOut()((values, mask))
        assert isinstance(out, tuple) and len(out) == 2
        for got, ref in zip(out, want):
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_the_entry_a_load_names_is_served(daemon, multipy):
    with daemon.client() as c:
        c.load("default", multipy["two"])
        c.load("fn", multipy["two"], entry="fn/fn.pkl")
        c.load("nested", multipy["two"], entry="a/b/c.pkl", methods=["make_prediction"])
        c.load("only", multipy["predictor"], entry="predictor/predictor.pkl")
        x = torch.arange(3.0)
        assert torch.equal(c.infer("default", x), x + 1)
        assert torch.equal(c.infer("fn", x), x + 5)
        # in process, the same entry of the same archive (weights mapped as a worker maps them)
        assert torch.equal(shoal.load_archive(multipy["two"], entry="fn/fn.pkl")(x), x + 5)
        for name in ("nested", "only"):
            neg, double = c.infer(name, x, x)
            assert torch.equal(neg, -x) and torch.equal(double, 2 * x)
        listed = {m["name"]: m for m in c.models()}
        assert listed["fn"]["entry"] == "fn/fn.pkl" and listed["default"]["entry"] == "model/model.pkl"
        assert listed["nested"]["methods"] == ["make_prediction"] and listed["fn"]["methods"] == []


def test_a_package_without_model_pkl_needs_its_entry_named(daemon, multipy):
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest) as e:
            c.load("p", multipy["predictor"])
        message = str(e.value)
        assert "model 'p'" in message and "no entry pickle model/model.pkl" in message
        assert "predictor/predictor.pkl" in message and "entry=" in message  # what it holds, how to pick it
        assert c.models() == []


@pytest.mark.parametrize("entry, says", [
    ("../model/model.pkl", "leaves the archive"),
    ("model/../../etc/passwd", "leaves the archive"),
    ("/model/model.pkl", "is an absolute path"),
    ("model.pkl", "names no package"),
    ("model/model.pkl\0.py", "NUL or other control character"),
    ("m/" + "x" * 300 + ".pkl", "more than 256"),
    (".data/version", "is not a Python module name"),
    ("fn/missing.pkl", "no entry pickle fn/missing.pkl; its pickles are "),
    ("notes/readme.pkl", "entry notes/readme.pkl is not a pickle"),
])
def test_bad_entries_are_refused_with_what_the_archive_holds(daemon, multipy, tmp_path, entry, says):
    path = multipy["two"]
    if "readme" in entry:  # a record that is not a pickle, named like one
        path = tmp_path / "text.pt"
        with PackageExporter(str(path)) as e:
            e.intern("**")
            e.save_pickle("model", "model.pkl", models.Shift(1.0))
            e.save_text("notes", "readme.pkl", "not a pickle")
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest) as e:
            c.load("m", path, entry=entry)
        message = e.value.message
        assert message.startswith("model 'm': ") and says in message, message
        if "pickles are" in says or "not a pickle" in says:
            assert str(path) in message and "model/model.pkl" in message  # names the archive, lists its pickles
        c.load("ok", path)  # the daemon still serves, and the archive itself is fine
        assert torch.equal(c.infer("ok", torch.zeros(1)), torch.ones(1))


def test_a_torchscript_archive_takes_no_entry(daemon, tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(models.PairPredictor()), str(path))
    with daemon.client() as c:
        with pytest.raises(shoal.BadRequest, match="TorchScript archive serves its module"):
            c.load("ts", path, entry="model/model.pkl")


@pytest.mark.parametrize("engine", ["package", "torchscript"])
def test_an_allowed_method_is_called_and_others_are_refused(daemon, multipy, tmp_path, engine):
    if engine == "package":
        path = multipy["predictor"]
        extra = {"entry": "predictor/predictor.pkl"}
    else:
        path = tmp_path / "ts.pt"
        torch.jit.save(torch.jit.script(models.PairPredictor()), str(path))
        extra = {}
    pairs = [(torch.rand(2), torch.rand(2)), (torch.rand(3), torch.rand(3))]
    want = models.PairPredictor().make_prediction(pairs)
    with daemon.client() as c:
        c.load("plain", path, **extra)
        with pytest.raises(shoal.BadRequest) as e:
            c.infer("plain", pairs, method="make_prediction")
        message = str(e.value)
        assert "model 'plain'" in message and "method 'make_prediction' is not allowed" in message
        assert "this model allows forward." in message and "methods=[\"make_prediction\"]" in message

        c.load("pred", path, methods=["make_prediction"], **extra)
        out = c.infer("pred", pairs, method="make_prediction")
        assert isinstance(out, list) and len(out) == 2
        for got, ref in zip(out, want):
            assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])
        a, b = pairs[0]
        neg, double = c.infer("pred", a, b, method="forward")  # forward is always allowed
        assert torch.equal(neg, -a) and torch.equal(double, 2 * b)
        with pytest.raises(shoal.BadRequest, match="this model allows forward, make_prediction[.]"):
            c.infer("pred", pairs, 2, method="make_batch")
        for hidden in ("_secret", "__class__", "__init__"):
            with pytest.raises(shoal.BadRequest, match="is private or special"):
                c.infer("pred", a, method=hidden)
        assert torch.equal(c.infer("pred", pairs, method="make_prediction")[1][0], want[1][0])  # still serving


def test_methods_a_load_cannot_allow_are_refused(daemon, multipy):
    with daemon.client() as c:
        for methods, says in ((["__call__"], "is private or special"), (["_secret"], "is private or special"),
                              (["not a name"], "is not a Python identifier"), (["m", "m"], "named twice"),
                              ([f"m{i}" for i in range(33)], "at most 32")):
            with pytest.raises(shoal.BadRequest, match=says):
                c.load("s", multipy["scorer"], entry="scorer/scorer.pkl", methods=methods)
        with pytest.raises(TypeError, match="list of method names"):
            c.load("s", multipy["scorer"], entry="scorer/scorer.pkl", methods="score")
        assert c.models() == []


def test_a_plain_object_serves_the_method_its_manifest_allows(daemon, tmp_path):
    scorer = models.Scorer(torch.arange(3.0))
    path = shoal.export(scorer, tmp_path / "scorer.pt", methods=["score", "threshold"])
    x = torch.ones(2, 3)
    with daemon.client() as c:
        c.load("s", path)
        assert c.models()[0]["methods"] == ["score", "threshold"]
        out = c.infer("s", x, method="score", scale=2.0)
        assert torch.equal(out["score"], scorer.score(x, scale=2.0)["score"])
        # allowed, but not a method of the object: refused by the worker, which keeps serving
        with pytest.raises(shoal.BadRequest, match="has no method 'threshold'"):
            c.infer("s", x, method="threshold")
        with pytest.raises(shoal.BadRequest, match="not allowed"):
            c.infer("s", x, method="forward_all")
        assert torch.equal(c.infer("s", x, method="score")["score"], scorer.score(x)["score"])
    with pytest.raises(ValueError, match="is private or special"):
        shoal.export(scorer, tmp_path / "bad.pt", methods=["_secret"])


def test_a_torchscript_manifest_allows_methods_too(daemon, tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(models.PairPredictor()), str(path),
                   _extra_files=shoal.torchscript_manifest(methods=["make_prediction"]))
    pairs = [(torch.rand(2), torch.rand(2))]
    with daemon.client() as c:
        c.load("ts", path)
        got = c.infer("ts", pairs, method="make_prediction")
        assert torch.equal(got[0][0], -pairs[0][0])
