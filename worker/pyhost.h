// The C interface of libshoal_pyhost.so, the worker's Python glue.
//
// shoal-worker does not link libpython: it dlopens libshoal_pyhost (which does) once per
// interpreter. With one interpreter the original library is loaded RTLD_GLOBAL, as an
// ordinary embedding would be; with K > 1, interpreter i loads a private copy linked to a
// private copy of libpython (worker/private_copy.h), RTLD_LOCAL, so each has its own
// Python runtime and GIL. Every function below acts on the runtime of the copy it belongs
// to. The executable finds them with one dlsym: shoal_pyhost_api().
#pragma once

#include <cstddef>
#include <cstdint>

extern "C" {

// Makes the private copy of an extension module for the calling interpreter: returns 0 and
// a malloc'ed path in *copy, or -1 and a malloc'ed message in *error.
typedef int (*ShoalPrepareExtensionFn)(void* ctx, const char* origin, const char* fullname, char** copy,
                                       char** error);

struct ShoalPyhostApi {
  int abi;  // kShoalPyhostAbi
  // Initialises Python with `python_dir` (if not empty) first on sys.path and imports
  // shoal._worker (and torch). With `prepare` set, extension modules are imported from
  // private copies (python/shoal/_copies.py); `index` 0 is the first interpreter of the
  // process. Returns 0, or -1 with a malloc'ed message. Leaves the GIL held.
  int (*start)(const char* python_dir, int index, ShoalPrepareExtensionFn prepare, void* ctx, char** error);
  // "Python 3.11.2, torch 1.13.1" (static storage); after start.
  const char* (*versions)();
  // With the GIL: builds the job runner of a worker slot (shoal._worker.Runner).
  int (*create_runner)(int slot, int interp, char** error);
  // With the GIL: gc.collect + gc.freeze (zygote, before forking).
  int (*freeze)(char** error);
  // With the GIL, around fork(2).
  void (*before_fork)();
  void (*after_fork_parent)();
  void (*after_fork_child)();
  // Releases / re-acquires the GIL for the calling thread (no-ops when already so).
  void (*release_gil)();
  void (*acquire_gil)();
  // A thread other than the one that called start: gives it a thread state and the GIL.
  void (*attach_thread)();
  // With the GIL: shoal._worker.self_test() (a small torch job; --check-interpreters).
  int (*self_test)(char** error);
  // With the GIL: passes one message body and the FIFO of received fds (fds[0..*nfds)) to
  // the runner, which takes from the front those its message carries; the rest are
  // written back to fds[0..*nfds). *reply (malloc'ed, may be empty: no reply) on 0, with
  // the fds to attach to it (output arenas it announces; still owned by the runner) in
  // out_fds[0..*n_out), *n_out at most its value on entry; *error on -1 (a bug in the
  // runner: the worker exits).
  int (*handle)(const char* body, size_t len, int* fds, size_t* nfds, char** reply, size_t* reply_len,
                int* out_fds, size_t* n_out, char** error);
  // With the GIL: shoal._sandbox.read_paths(), the folders this interpreter imports
  // from, '\n'-separated, in *paths (malloc'ed).
  int (*import_folders)(char** paths, char** error);
  // With the GIL, in a worker before its sandbox closes: shoal._sandbox.enter(tmp_dir,
  // confined) points the interpreter's temporary files at `tmp_dir`.
  int (*enter_sandbox)(const char* tmp_dir, int confined, const char* env, char** error);
  // Without the GIL, from any thread, once create_runner succeeded: frees `n` blocks of the
  // runner's output arena `arena` (shm/output_release_api.h; no Python runs) and writes the
  // usage notice to send back in notice[0..*len) (none when `notice` is null); -1 when it
  // does not fit in `cap` bytes.
  int (*release)(uint64_t arena, const uint64_t* blocks, size_t n, char* notice, size_t cap, size_t* len);
};

constexpr int kShoalPyhostAbi = 5;

typedef const ShoalPyhostApi* (*ShoalPyhostApiFn)();
const ShoalPyhostApi* shoal_pyhost_api();
}
