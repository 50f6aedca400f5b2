// Running a helper program and collecting what it prints (patchelf, shoal-worker's
// start-up check). Thread-safety: reentrant.
#pragma once

#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

struct ProcessOutput {
  int wait_status = 0;  // as from waitpid
  std::string out;      // stdout
  std::string err;      // stderr
  bool timed_out = false;
  bool succeeded() const;  // exited with code 0
  // "exit code 1" / "signal SIGABRT (Aborted)" / "no answer within N s".
  std::string Describe() const;
};

// Runs argv[0] (a path) with argv, without a shell; kills it after `timeout_s` (0: no
// limit). An error only when it could not be started.
Result<ProcessOutput> RunProcess(const std::vector<std::string>& argv, int timeout_s = 0);

// RunProcess for tools that must succeed: their stdout, else an error that carries the
// command line and what it printed on stderr.
Result<std::string> RunTool(const std::vector<std::string>& argv);

// "signal SIGSEGV (Segmentation fault)" / "exit code 3" for a waitpid status.
std::string DescribeWaitStatus(int status);

}  // namespace shoal
