"""Writes archives of the test models into DIR (for the C++ tests):
    python3 make_archives.py DIR"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import shoal  # noqa: E402
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
print(f"archives in {out}")
