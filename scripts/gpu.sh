#!/usr/bin/env bash
# The GPU machine's one command (it has no package registry): `scripts/gpu.sh pack` here,
# on a Debian machine, gathers into .gpudeps/ (git-ignored) what that machine lacks:
# spdlog/fmt/msgpack-cxx/nlohmann-json headers, Boost.Program_options (headers + library), patchelf and
# the pure-Python msgpack. `scripts/gpu.sh test` there (carry .gpudeps) builds and runs
# every test, GPU tests included; they skip cleanly on machines without a GPU.
# `scripts/gpu.sh run CMD ...` runs CMD (a benchmark) in the same environment, after test.
# `scripts/gpu.sh build` builds only what the benchmarks run (shoald, the workers, the Python
# package, bench_roundtrip, bench_ts_threads: CMakeLists.txt's shoal_bench_programs), for a call
# with little time. On a fresh H200 host, 2026-12-07, it took about 450 s, its seven targets
# built one after another; one target since 2026-12-08, with lighter libtorch headers and the
# worker's files compiled once (on the 2-core VM 494 -> 412 s for the first change alone; not
# yet timed there: give a first call 480 s before any benchmark until it is).
# `scripts/gpu.sh bench quick|batching|paper`, after test (or build.sh): the open issues'
# GPU-host figures, a set per device call (quick: the job path, ~4 min; batching: ResNet-50
# with dynamic batching under either worker executable, then 3 workers, ~7 min; paper: ResNet-50 on the host's CPUs, ~6 min), each
# benchmark under its own time limit (bench/README.md says what each means).
set -euo pipefail
cd "$(dirname "$0")/.."
DEPS=$PWD/.gpudeps
case "${1:-}" in
  pack)
    rm -rf "$DEPS" && mkdir -p "$DEPS"/{include/boost,lib,bin,python}
    cp -r /usr/include/spdlog /usr/include/fmt /usr/include/msgpack /usr/include/msgpack.hpp /usr/include/nlohmann "$DEPS/include/"
    cp -r /usr/include/boost/program_options /usr/include/boost/program_options.hpp "$DEPS/include/boost/"
    cp /usr/lib/x86_64-linux-gnu/libboost_program_options.so.1.* "$DEPS/lib/"
    cp "$DEPS"/lib/libboost_program_options.so.1.* "$DEPS/lib/libboost_program_options.so"  # no links: carried trees may drop them
    cp "$(command -v patchelf)" "$DEPS/bin/"
    mkdir -p "$DEPS/python/msgpack"
    cp /usr/lib/python3/dist-packages/msgpack/*.py "$DEPS/python/msgpack/"  # pure Python: any version
    du -sh "$DEPS"
    ;;
  test | run | bench | build)
    export PATH=$DEPS/bin:$PATH
    # The carried msgpack is pure Python (10x slower than the C extension): only where the
    # host has none. It used to come first and shadow the host's own, so every Python
    # client and worker on the GPU host encoded through it.
    if ! python3 -c "import msgpack" 2>/dev/null; then
      export PYTHONPATH=$DEPS/python${PYTHONPATH:+:$PYTHONPATH}
    fi
    export SHOAL_NO_INSTALL=1 SHOAL_BUILD_DIR=${SHOAL_BUILD_DIR:-build-gpu}
    if [ "$1" = run ]; then  # a command (a benchmark) in this environment, on the build
      shift
      exec "$@"
    fi
    if [ "$1" = bench ]; then  # each set fits one device call (10 min) after a build
      PY=$(command -v python3)
      limited() { local t=$1; shift; echo "== $* (limit ${t} s)"; timeout "$t" "$@" || echo "== exit $? ($*)"; }
      case "${2:-}" in
        quick)
          limited 90 "$PY" bench/gpu_path.py --runs 3 --jobs 2000
          limited 120 "$PY" bench/roundtrip.py --runs 3 --iters 2000 --spin-us 0,50
          limited 60 "$PY" bench/worker_python.py --runs 3 --jobs 200
          limited 60 "$PY" bench/client_cpu.py --runs 5 --jobs 3000 ;;
        batching)  # the worker executables alternating, twice each (a run: ~50 s of export and load)
          for i in 1 2; do
            for wb in shoal-worker-py shoal-worker; do
              limited 90 "$PY" bench/batching.py --model resnet50 --clients 32 --seconds 8 --device cuda --workers 2 \
                --only-on --max-delays 2000 --shoald-args "--worker-binary $PWD/$SHOAL_BUILD_DIR/bin/$wb"
            done
          done
          # a third worker on the GPU, and a hold below 2 ms (left to try on 2026-12-06)
          limited 120 "$PY" bench/batching.py --model resnet50 --clients 32 --seconds 8 --device cuda --workers 3 \
            --only-on --max-delays 1000,2000 ;;
        hold)  # two workers, holds below 2 ms; the queued/ran columns split the latency
          limited 150 "$PY" bench/batching.py --model resnet50 --clients 32 --seconds 8 --device cuda --workers 2 \
            --only-on --max-delays 500,1000,2000 ;;
        split)  # where a batch's time goes: ResNet-50 timed inside the worker (TimedRun) against this process
          for w in 1 2; do
            limited 110 "$PY" bench/batching.py --model resnet50 --clients 32 --seconds 8 --device cuda --workers $w \
              --only-on --max-delays 2000 --timed
          done ;;
        hold-private)  # the same at 2000 us, each worker with its own copy of the weights
          limited 100 "$PY" bench/batching.py --model resnet50 --clients 32 --seconds 8 --device cuda --workers 2 \
            --only-on --max-delays 2000 --shoald-args "--share-gpu-weights no" ;;
        paper) limited 420 "$PY" bench/paper.py --models resnet50 --slots 1,16 --seconds 10 ;;
        paper16)  # 16 slots only, with (c2): the baseline as 16 processes (the 16-slot gap)
          limited 330 "$PY" bench/paper.py --models resnet50 --slots 16 --seconds 8 ;;
        python)  # what Python costs a job on this torch: the worker's side in-process, the client's, profiled
          limited 60 "$PY" bench/worker_handle.py --runs 3 --jobs 5000 --device cuda --batch 8,32 --profile
          limited 40 "$PY" bench/worker_handle.py --runs 3 --jobs 5000
          limited 90 "$PY" bench/client_cpu.py --runs 3 --jobs 3000 --profile ;;
        spin)  # who polls: nobody, shoald's own choice (spin_us = auto), everyone
          limited 160 "$PY" bench/roundtrip.py --runs 3 --iters 2000 --spin-us 0,auto,50 --torchscript
          limited 60 "$PY" bench/client_cpu.py --runs 5 --jobs 3000 ;;
        *) echo "usage: scripts/gpu.sh bench quick|batching|hold|hold-private|split|python|paper|paper16|spin" >&2; exit 2 ;;
      esac
      exit 0
    fi
    export SHOAL_CMAKE_ARGS="-DSHOAL_EXTRA_INCLUDE=$DEPS/include -DSHOAL_EXTRA_LIB=$DEPS/lib ${SHOAL_CMAKE_ARGS:-}"
    if [ "$1" = build ]; then
      SHOAL_BUILD_TARGETS=shoal_bench_programs exec ./scripts/build.sh  # CMakeLists.txt says what it holds
    fi
    ./scripts/build.sh
    cd "$SHOAL_BUILD_DIR"
    ctest --output-on-failure -j"$(nproc)" --timeout 900 ${CTEST_ARGS:-}
    ;;
  *)
    echo "usage: scripts/gpu.sh pack | test | build | run CMD... | bench quick|batching|hold|hold-private|split|python|paper|paper16|spin" >&2
    exit 2
    ;;
esac
