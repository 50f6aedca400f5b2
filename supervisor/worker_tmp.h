// WorkerTmp: the folder that holds every worker's private temporary folder.
//
// Made when shoald starts workers, under shoald's $TMPDIR (else /tmp), mode 0700 with an
// unpredictable name (shoald-XXXXXX). Each worker makes ROOT/PID in it and uses it as its
// TMPDIR, the only folder its model code may write under Landlock (worker/filesystem_view.h).
// shoald removes ROOT/PID once that process is reaped, and ROOT when the pool goes. Removal
// never follows a symbolic link, since model code may still be changing the tree: a link
// it planted is removed, not what it points to.
// Thread-safety: loop thread only (the destructor after the loop stopped).
#pragma once

#include <sys/types.h>

#include <string>

#include "shoal/status.h"

namespace shoal {

class WorkerTmp {
 public:
  WorkerTmp() = default;
  ~WorkerTmp();  // removes the folder and everything left in it
  WorkerTmp(const WorkerTmp&) = delete;
  WorkerTmp& operator=(const WorkerTmp&) = delete;

  // Makes the folder (once; later calls keep it).
  Status Create();
  // The folder; empty until Create succeeded.
  const std::string& root() const { return root_; }
  // Removes the private folder of process `pid` if it has one.
  void Remove(pid_t pid);

 private:
  std::string root_;
};

}  // namespace shoal
