"""Inputs with the model's own structure (docs/protocol.md, "Call structure"): keyword
arguments, lists, tuples and dicts of tensors, scalars, strings and None reach the model as
its forward takes them, from a torch.package and a TorchScript archive alike; shoald
refuses a malformed structure before anything reaches a worker."""
import threading

import numpy as np
import pytest
import torch

import shoal

import shoal_test_models as models

MODELS = {"enc": models.KeywordEncoder, "det": models.ListOfImages, "ds": models.DictAndScalars,
          "nested": models.Nested}


@pytest.fixture(scope="module", params=["package", "torchscript"])
def served(request, tmp_path_factory):
    """(engine, {name: archive}) for both engines."""
    out = tmp_path_factory.mktemp("call_" + request.param)
    paths = {}
    for name, cls in MODELS.items():
        path = out / f"{name}.pt"
        if request.param == "package":
            shoal.export(cls(), path)
        else:
            torch.jit.save(torch.jit.script(cls()), str(path))
        paths[name] = path
    return request.param, paths


def load(c, paths, *names):
    for n in names:
        c.load(n, paths[n])


def test_keyword_arguments_reach_the_model(daemon, served):
    _, paths = served
    with daemon.client() as c:
        load(c, paths, "enc")
        ids = torch.arange(6).reshape(2, 3)
        mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        out = c.infer("enc", input_ids=ids, attention_mask=mask)
        want = models.KeywordEncoder()(input_ids=ids, attention_mask=mask)
        assert set(out) == {"last_hidden_state", "pooled"}
        assert torch.equal(out["last_hidden_state"], want["last_hidden_state"])
        assert torch.equal(out["pooled"], want["pooled"])
        # a keyword left out takes its default; a scalar keyword; positional and keyword mixed
        assert torch.equal(c.infer("enc", input_ids=ids)["pooled"], ids.float().sum(-1))
        assert torch.equal(c.infer("enc", ids, scale=2.0)["pooled"], 2 * ids.float().sum(-1))
        # numpy arrays too, and kwargs= for a model keyword the client's own could shadow
        assert torch.equal(c.infer("enc", kwargs={"input_ids": ids.numpy()}, attention_mask=mask)["pooled"],
                           want["pooled"])


def test_a_list_of_tensors_reaches_a_detector_style_model(daemon, served):
    _, paths = served
    with daemon.client() as c:
        load(c, paths, "det")
        imgs = [torch.rand(3, 8, 8), torch.rand(3, 4, 6)]
        out = c.infer("det", imgs)
        want = models.ListOfImages()(imgs)
        assert isinstance(out, list) and len(out) == 2
        for o, w in zip(out, want):
            assert torch.equal(o["boxes"], w["boxes"]) and torch.equal(o["scores"], w["scores"])
        # submit and infer_async take the same arguments
        assert torch.equal(c.submit("det", imgs[:1]).result(timeout=60)[0]["scores"], want[0]["scores"])


def test_dicts_scalars_strings_and_none_reach_the_model(daemon, served):
    _, paths = served
    with daemon.client() as c:
        load(c, paths, "ds")
        feats = {"a": torch.ones(3), "b": torch.arange(3.0)}
        total, k, alpha, flag, mode, no_bias = c.infer("ds", feats, 3, 0.5, True, "fast", None)
        assert torch.equal(total, -(feats["a"] * 0.5 + feats["b"] * 3.0))
        assert (k, alpha, flag, mode, no_bias) == (4, 1.0, False, "fast!", True)
        bias = torch.full((3,), 10.0)
        total, *_, no_bias = c.infer("ds", feats, k=2, alpha=1.0, flag=False, mode="", bias=bias)
        assert torch.equal(total, feats["a"] + feats["b"] * 2.0 + bias) and no_bias is False


def test_nested_structures_reach_the_model(daemon, served):
    _, paths = served
    with daemon.client() as c:
        load(c, paths, "nested")
        x, y, z, w = (torch.full((2,), float(v)) for v in (1, 2, 3, 4))
        out = c.infer("nested", (x, [y, z]), {"w": (w,)})
        assert torch.equal(out, torch.full((2,), 10.0))
        out = c.infer("nested", pair=(x, []), extra={"w": (w,)})
        assert torch.equal(out, torch.full((2,), 5.0))


def test_values_that_cannot_travel_raise_type_error_before_sending(daemon, served):
    _, paths = served
    with daemon.client() as c:
        load(c, paths, "enc")
        for bad in (object(), {1.5: torch.ones(1)}, {torch.ones(1)}):
            with pytest.raises(TypeError):
                c.infer("enc", bad)
        with pytest.raises(TypeError, match="given both"):
            c.infer("enc", kwargs={"input_ids": torch.ones(1)}, input_ids=torch.ones(1))
        assert c.status()["jobs_done"] == 0  # nothing was sent


def test_an_unknown_keyword_is_refused(daemon, served):
    engine, paths = served
    with daemon.client() as c:
        load(c, paths, "enc")
        code = shoal.BadRequest if engine == "torchscript" else shoal.ModelError
        with pytest.raises(code, match="input_idz"):
            c.infer("enc", input_idz=torch.ones(2, 3))
        assert torch.equal(c.infer("enc", input_ids=torch.ones(1, 2))["pooled"], torch.full((1,), 2.0))


# -- malformed structures, as raw messages: shoald refuses them, a victim keeps being served --

def deep(n):
    node = {"input": 0}
    for _ in range(n):
        node = {"list": [node]}
    return node


BAD = [
    ({"args": [{"list": [{"input": 0}, {"input": 1}]}, {"dict": [["boxes", {"input": 7}]]}]},
     'args[1]["boxes"]: input index 7 out of range (3 inputs)'),
    ({"args": [{"input": 0}, {"input": 1}]}, "input 2 is referenced by no node"),
    ({"args": [{"input": 0}, {"input": 1}, {"tuple": [{"input": 2}, {"input": 1}]}]},
     "args[2][1]: input 1 is referenced twice"),
    ({"args": [{"input": 0}, {"input": 1}, deep(17)]}, "nested more than 16 levels deep"),
    ({"args": [{"input": 0}, {"input": 1}, {"input": 2}, {"list": [{"value": 1}] * 2100},
               {"list": [{"value": 2}] * 2100}]}, "more than 4096 nodes"),
    ({"args": [{"input": 0}], "kwargs": [["attention-mask", {"input": 1}], ["x", {"input": 2}]]},
     "is not a Python identifier"),
    ({"args": [{"input": 0}], "kwargs": [["x", {"input": 1}], ["x", {"input": 2}]]}, 'keyword "x" given twice'),
    ({"args": [{"input": 0}, {"input": 1}, {"set": [{"input": 2}]}]}, 'args[2]: unknown node kind "set"'),
    ({"args": [{"input": 0}, {"input": 1}, {"tensor": {}}]}, "not \"tensor\""),
    ({"args": [{"input": 0}, {"input": 1}, {"dict": [[1.5, {"input": 2}]]}]}, "dict keys are str or int"),
    ({"args": [{"input": 0}, {"input": 1}, {"value": "x" * 70000}, {"input": 2}]}, "a string of 70000 bytes"),
    ({"args": [{"input": 0}, {"input": 1}, {"input": 2}], "method": "no such"}, "method 'no such' is not a Python identifier"),
    ({"args": [{"input": 0}, {"input": 1}, {"input": 2}], "method": "load_state_dict"},
     "method 'load_state_dict' is not allowed"),
]


def test_malformed_structures_are_bad_requests_and_the_victim_is_served(daemon, served):
    _, paths = served
    with daemon.client() as victim, daemon.client() as attacker:
        load(victim, paths, "nested")
        stop = threading.Event()
        served_ok, failures = [], []

        def serve():
            x = torch.ones(2)
            while not stop.is_set():
                try:
                    out = victim.infer("nested", (x, [x]), {"w": (x,)}, timeout=60)
                    served_ok.append(torch.equal(out, torch.full((2,), 3.0)))
                except Exception as e:  # noqa: BLE001 - the test asserts there are none
                    failures.append(e)
        t = threading.Thread(target=serve)
        t.start()
        try:
            keep = {}
            inputs = [attacker._describe(torch.ones(2), keep) for _ in range(3)]
            for fields, needle in BAD:
                msg = {"op": "infer", "model": "nested", "inputs": inputs, **fields}
                with pytest.raises(shoal.BadRequest) as e:
                    attacker._call(msg)
                text = str(e.value)
                assert needle in text, text
                assert "model 'nested'" in text
        finally:
            stop.set()
            t.join()
        assert not failures and served_ok and all(served_ok)
        assert victim.status()["worker_restarts"] == 0
        # the attacker's connection keeps working too
        x = torch.ones(2)
        assert torch.equal(attacker.infer("nested", (x, [x]), {"w": (x,)}), torch.full((2,), 3.0))


def test_a_string_that_is_not_utf8_is_a_bad_request_not_a_dead_worker(daemon, served, monkeypatch):
    """Workers decode every string of a call as a Python str; one that is not UTF-8 (a C++
    client's std::string of raw bytes; here packed by hand) stopped the worker's message
    loop. shoald refuses it, for a value, a dict key and a named tuple's name alike."""
    _, paths = served
    import msgpack
    import shoal._connection

    class Packs:  # the client's msgpack, packing surrogate-escaped str as the raw bytes they stand for
        def __getattr__(self, name):
            return getattr(msgpack, name)

        @staticmethod
        def packb(o, **kw):
            return msgpack.packb(o, unicode_errors="surrogateescape", **kw)
    with daemon.client() as c:
        load(c, paths, "ds")
        keep = {}
        feats = [c._describe(torch.ones(2), keep) for _ in range(2)]
        call = {"args": [{"dict": [["a", {"input": 0}], ["b", {"input": 1}]]}, {"value": 3}, {"float": 0.5},
                         {"value": False}, {"value": "m"}]}
        monkeypatch.setattr(shoal._connection, "msgpack", Packs())
        bad_value = {"args": call["args"][:4] + [{"value": "caf\udce9"}]}
        bad_key = {"args": [{"dict": [["a", {"input": 0}], ["\udcff", {"input": 1}]]}] + call["args"][1:]}
        bad_name = {"args": call["args"][:4] + [{"namedtuple": ["T\udcff", ["x"], [{"value": 1}]]}]}
        for fields, where in ((bad_value, "args[4]"), (bad_key, "args[0]"), (bad_name, "args[4]")):
            with pytest.raises(shoal.BadRequest, match="not UTF-8") as e:
                c._call({"op": "infer", "model": "ds", "inputs": feats, **fields})
            assert where in str(e.value) and "model 'ds'" in str(e.value)
        monkeypatch.undo()
        assert c.status()["worker_restarts"] == 0
        total, *_ = c.infer("ds", {"a": torch.ones(2), "b": torch.ones(2)}, 3, 0.5, False, "m")
        assert torch.equal(total, torch.full((2,), 3.5))
