// The C entry through which a worker's message loop frees blocks of the Python runner's
// output arenas without running Python: _native.OutputArenas.release_api() hands it out
// in a capsule (python/native/arena.cc), libshoal_pyhost keeps it for its interpreter's
// runner (worker/pyhost.cc), and the worker's router calls it for every `release`
// notice of that runner's arenas (worker/router.cc). A plain C struct, because the
// _native module and shoal-worker are separate builds' objects in principle: `version`
// says which layout this is.
// Thread-safety: `release` may be called from any thread, with or without the GIL
// (shm/output_arenas.h has its own mutex).
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

struct ShoalOutputReleaseApi {
  int version;    // kShoalOutputReleaseApiVersion
  void* arenas;   // the runner's shoal::OutputArenas, owned by its _native.OutputArenas
  // Frees the `n` blocks of `arena` handed out there (anything else is ignored) and writes
  // the usage notice that follows (protocol/output_tree.h: UsageNotice) to
  // notice[0..*len), unless `notice` is null; returns -1 when `cap` bytes cannot hold it.
  int (*release)(void* arenas, uint64_t arena, const uint64_t* blocks, size_t n, char* notice, size_t cap,
                 size_t* len);
};

}  // extern "C"

constexpr int kShoalOutputReleaseApiVersion = 2;  // 2: a null notice frees only
constexpr const char* kShoalOutputReleaseCapsule = "shoal._native.OutputArenas.release_api";
