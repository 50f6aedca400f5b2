#!/usr/bin/env bash
# Configures and builds shoal into ${SHOAL_BUILD_DIR:-build}.
# SHOAL_PYTHON=/path/to/python3 picks the interpreter (default: the first that imports torch);
# SHOAL_BUILD_TARGETS="a b" builds only those targets (default: all), one after another (make
# takes several goals in turn): for a parallel build of several, name one target that depends
# on them (CMakeLists.txt: shoal_bench_programs).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${SHOAL_BUILD_DIR:-build}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo ${SHOAL_PYTHON:+-DSHOAL_PYTHON=$SHOAL_PYTHON} \
  ${SHOAL_CMAKE_ARGS:-} >/dev/null
cmake --build "$BUILD" -j"$(nproc)" ${SHOAL_BUILD_TARGETS:+--target $SHOAL_BUILD_TARGETS}
