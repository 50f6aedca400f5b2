// ProcessMemorySampler: Rss and Pss of the worker processes, read from
// /proc/PID/smaps_rollup (or the copy of it a worker opened itself and handed over: a
// non-dumpable worker's file cannot be opened by a shoald that is not root) by a thread of
// its own every `period`, so that `status` answers
// from figures gathered off the event loop (reading smaps_rollup walks the process's page
// tables: milliseconds per large worker).
// Thread-safety: every method may be called from any thread; the loop calls Track/Untrack
// and Get, the sampling thread only reads /proc. Figures are at most one period old.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

namespace shoal {

struct ProcessMemory {
  uint64_t rss_kb = 0;
  uint64_t pss_kb = 0;  // shared pages counted once across the processes sharing them
};

// A process's Rss and Pss in kB, zeros if unknown. Blocking file reads: not on the loop.
ProcessMemory ReadProcessMemory(pid_t pid);
// The same from an open smaps_rollup file (read from its start; it stays open).
ProcessMemory ReadProcessMemoryFile(int fd);

class ProcessMemorySampler {
 public:
  explicit ProcessMemorySampler(std::chrono::milliseconds period = std::chrono::milliseconds(1000));
  ~ProcessMemorySampler();  // stops and joins the thread
  ProcessMemorySampler(const ProcessMemorySampler&) = delete;
  ProcessMemorySampler& operator=(const ProcessMemorySampler&) = delete;

  void Track(pid_t pid);    // sampled from the next round on (sooner: wakes the thread)
  // From now on `pid`'s figures come from `fd`, its smaps_rollup opened by the process
  // itself (taken; closed by Untrack).
  void ReadFrom(pid_t pid, int fd);
  void Untrack(pid_t pid);
  ProcessMemory Get(pid_t pid) const;  // the last figures, zeros before the first sample

 private:
  void Loop();

  const std::chrono::milliseconds period_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<pid_t, ProcessMemory> figures_;  // GUARDED_BY(mu_)
  std::map<pid_t, std::shared_ptr<const int>> files_;  // GUARDED_BY(mu_); the fd closes with the last holder
  bool stop_ = false;                       // GUARDED_BY(mu_)
  bool fresh_ = false;                      // GUARDED_BY(mu_): a pid was added since the last round
  std::thread thread_;
};

}  // namespace shoal
