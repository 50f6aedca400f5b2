#!/usr/bin/env bash
# Installs, builds and runs every test (Catch2 + pytest, all under ctest).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
./scripts/build.sh
cd "${SHOAL_BUILD_DIR:-build}"
ctest --output-on-failure -j"$(nproc)" --timeout 900
