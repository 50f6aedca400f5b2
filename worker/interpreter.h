// Interpreter: the embedded CPython of a worker (K=1: the process's own interpreter).
//
// All model semantics live in Python (python/shoal/_worker.py: archive loading, tensors
// over arena memory, running the model); this class starts the interpreter, imports that
// module and hands it each message. Thread-safety: call from the thread that created it.
// The GIL is released while the caller waits for the next message.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

class Interpreter {
 public:
  // Initialises Python (with `python_dir`, if not empty, first on sys.path) and imports
  // the runner's module (and with it torch).
  static Result<std::unique_ptr<Interpreter>> Start(const std::string& python_dir);
  // Builds the job runner of a worker slot.
  Status CreateRunner(int slot);
  // Zygote: moves every object alive now to the permanent generation (gc.freeze), so that
  // the collector in forked workers never writes to these pages and they stay shared.
  Status Freeze();
  // Around fork(2), with the GIL held (PyOS_BeforeFork / AfterFork_*).
  void BeforeFork();
  void AfterForkParent();
  void AfterForkChild();
  ~Interpreter();
  Interpreter(const Interpreter&) = delete;
  Interpreter& operator=(const Interpreter&) = delete;

  // Passes one message body and the FIFO of received fds to the runner, which takes (from
  // the front) those its message carries; the others stay in *fds for later messages.
  // Returns the reply body, or an empty string when the message needs no reply.
  Result<std::string> Handle(const std::string& body, std::vector<int>* fds);

  // Releases / re-acquires the GIL around blocking waits.
  void ReleaseGil();
  void AcquireGil();

 private:
  Interpreter() = default;
  void* module_ = nullptr;      // PyObject*: shoal._worker
  void* runner_ = nullptr;      // PyObject*
  void* handle_ = nullptr;      // PyObject*: runner.handle
  void* saved_thread_ = nullptr;  // PyThreadState* while the GIL is released
};

}  // namespace shoal
