"""Writes archives of the test models into DIR (for the C++ tests):
    python3 make_archives.py DIR"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoal  # noqa: E402
import multipy_style  # noqa: E402
import shoal_test_models as m  # noqa: E402

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, obj in {"add": m.AddConst(1.0), "identity": m.Identity(), "crashy": m.Crashy(),
                  "raises": m.Raises(), "branchy": m.Branchy(), "lift": m.LiftsToGpu(),
                  "sleeps": m.Sleeps()}.items():
    shoal.export(obj, os.path.join(out, f"{name}.pt"))
# Models taking the call structures of docs/protocol.md ("Call structure"), as a
# torch.package and as a TorchScript archive.
import torch  # noqa: E402
for name, cls in {"kwenc": m.KeywordEncoder, "images": m.ListOfImages, "dicts": m.DictAndScalars}.items():
    shoal.export(cls(), os.path.join(out, f"{name}.pt"))
    torch.jit.save(torch.jit.script(cls()), os.path.join(out, f"{name}_ts.pt"))
# A MultiPy-style package whose served object is not model/model.pkl (a predictor with
# make_prediction), and the same predictor as a TorchScript archive.
from torch.package import PackageExporter  # noqa: E402
with PackageExporter(os.path.join(out, "predictor.pt")) as e:
    e.intern("**")
    e.save_pickle("predictor", "predictor.pkl", multipy_style.PairPredictor())
torch.jit.save(torch.jit.script(multipy_style.PairPredictor()), os.path.join(out, "predictor_ts.pt"))
print(f"archives in {out}")
