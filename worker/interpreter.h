// Interpreter: one embedded CPython runtime of a worker, as the worker's C++ sees it.
//
// Each is a loaded libshoal_pyhost (worker/pyhost.h): the original one, loaded
// RTLD_GLOBAL, when the worker has one interpreter; private copies, loaded RTLD_LOCAL,
// when it has several (worker/private_copy.h). All model semantics live in Python
// (python/shoal/_worker.py). Thread-safety: Handle/CreateRunner need the GIL of this
// interpreter on the calling thread (AcquireGil, or AttachThread for a new thread);
// Release needs none.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "protocol/output_tree.h"
#include "shoal/status.h"
#include "worker/private_copy.h"
#include "worker/pyhost.h"

namespace shoal {

class Interpreter {
 public:
  // Loads a pyhost and initialises Python in it (shoal package from `python_dir` if not
  // empty); `copies` null: the process's only interpreter, else interpreter `index` on
  // private copies made in that cache folder. Returns with the GIL held by this thread.
  static Result<std::unique_ptr<Interpreter>> Start(const std::string& python_dir, const std::string& copies_dir,
                                                    int index);
  ~Interpreter() = default;
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  int index() const { return index_; }
  // "Python 3.11.2, torch 1.13.1".
  std::string versions() const { return api_->versions(); }

  // Builds the job runner of (worker slot, interpreter index).
  Status CreateRunner(int slot);
  // The folders this interpreter imports from (python/shoal/_sandbox.py). Touches every
  // module: the zygote asks, before it forks, so that workers keep those pages shared.
  Result<std::vector<std::string>> ImportFolders();
  // In a worker, before its sandbox closes: points this interpreter's temporary files at
  // `tmp_dir` (and, when `confined`, the caches that default under $HOME), and sets `env`
  // in os.environ (a snapshot the zygote took: what the worker set since is not in it).
  Status EnterSandbox(const std::string& tmp_dir, bool confined,
                      const std::vector<std::pair<std::string, std::string>>& env);
  // Runs shoal._worker.self_test() (a small torch job).
  Status SelfTest();
  // Zygote: moves every object alive now to the permanent generation (gc.freeze), so that
  // the collector in forked workers never writes to these pages and they stay shared.
  Status Freeze();
  // Around fork(2), with the GIL held (PyOS_BeforeFork / AfterFork_*).
  void BeforeFork() { api_->before_fork(); }
  void AfterForkParent() { api_->after_fork_parent(); }
  void AfterForkChild() { api_->after_fork_child(); }
  // A worker that runs as its own user (shoald is root) cannot write the cache the
  // root-owned zygote made; copies it needs from now on go under `dir` (its user's), while
  // the copies already loaded stay as they are. Never in the zygote: it must not load
  // files a worker could write. No-op with one interpreter.
  void MakeNewCopiesIn(const std::string& dir) {
    if (copies_) copies_->MakeNewCopiesIn(dir);
  }

  // Passes one message body and the FIFO of received fds to the runner, which takes (from
  // the front) those its message carries; the others stay in *fds for later messages.
  // Returns the reply (empty body: the message needs no reply) with the fds to attach to
  // it (owned by the runner).
  Result<EncodedReply> Handle(const std::string& body, std::vector<int>* fds);

  // Frees `blocks` of the runner's output arena `arena` (a release notice) and returns the
  // usage notice to send back ("" with `notice` false: nothing is worked out). No Python
  // runs: any thread may call it, GIL or not.
  std::string Release(uint64_t arena, const std::vector<uint64_t>& blocks, bool notice = true);

  // Releases / re-acquires the GIL around blocking waits (for the calling thread).
  void ReleaseGil() { api_->release_gil(); }
  void AcquireGil() { api_->acquire_gil(); }
  // A thread that is not the one that called Start: its own thread state, GIL held.
  void AttachThread() { api_->attach_thread(); }

 private:
  Interpreter() = default;
  int index_ = 0;
  const ShoalPyhostApi* api_ = nullptr;
  std::unique_ptr<InterpreterCopies> copies_;  // null with one interpreter
};

// Where libshoal_pyhost.so is: $SHOAL_PYHOST, else beside this executable's lib folder
// (build/lib/shoal, /usr/lib/shoal), else the install location compiled in.
std::string PyhostPath();

}  // namespace shoal
