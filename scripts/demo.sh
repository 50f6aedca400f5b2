#!/usr/bin/env bash
# Installs, builds, starts shoald, packages the example model, runs inference through the
# Python client, the CLI and the C++ client, prints the results, and stops shoald.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
BUILD=$(cd "${SHOAL_BUILD_DIR:-build}" && pwd)
PY=$(grep -m1 '^SHOAL_PYTHON:' "$BUILD/CMakeCache.txt" | cut -d= -f2)
WORK=$(mktemp -d /tmp/shoal-demo.XXXXXX)
SOCK="$WORK/shoal.sock"
# Workers may read archives only in the folders shoald names (Landlock: docs/security.md).
"$BUILD/bin/shoald" --socket "$SOCK" --workers 2 --sandbox-read-paths "$WORK" >"$WORK/shoald.log" 2>&1 &
SHOALD=$!
trap 'kill $SHOALD 2>/dev/null; wait $SHOALD 2>/dev/null; rm -rf "$WORK"' EXIT
echo "== packaging examples/tiny_classifier.py into $WORK/classifier.pt"
PYTHONPATH="$BUILD/python:examples" "$PY" - "$WORK" <<'PYEOF'
import sys, numpy as np, torch, shoal, tiny_classifier
model = tiny_classifier.make_model()
shoal.export(model, f"{sys.argv[1]}/classifier.pt")
torch.manual_seed(0)
np.save(f"{sys.argv[1]}/x.npy", torch.randn(2, 8).numpy())
PYEOF
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
echo "== shoal load / models"
"$BUILD/bin/shoal" --socket "$SOCK" load classifier "$WORK/classifier.pt"
"$BUILD/bin/shoal" --socket "$SOCK" models
echo "== Python client"
PYTHONPATH="$BUILD/python:examples" "$PY" - "$SOCK" "$WORK" <<'PYEOF'
import sys, numpy as np, torch, shoal, tiny_classifier
c = shoal.Client(sys.argv[1])
x = c.empty((2, 8))                       # lives in shared memory: no copy on the way in
x.copy_(torch.from_numpy(np.load(f"{sys.argv[2]}/x.npy")))
out = c.infer("classifier", x)
print("served:", out)
with torch.no_grad():
    ref = tiny_classifier.make_model()(x.clone())
print("max |served - eager| =", float((out["probs"] - ref["probs"]).abs().max()))
PYEOF
echo "== shoal infer (CLI)"
"$BUILD/bin/shoal" --socket "$SOCK" infer classifier "$WORK/x.npy" -o "$WORK/y.npz"
echo "== C++ client"
"$BUILD/bin/shoal-infer-cpp" --socket "$SOCK" classifier 1 8
