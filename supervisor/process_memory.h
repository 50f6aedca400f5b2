// ProcessMemorySampler: Rss and Pss of the worker processes, read from
// /proc/PID/smaps_rollup (or the copy of it a worker opened itself and handed over: a
// non-dumpable worker's file cannot be opened by a shoald that is not root) by a thread of
// its own every `period`, so that `status` answers
// from figures gathered off the event loop (reading smaps_rollup walks the process's page
// tables: milliseconds per large worker). It also watches workers' memory limits
// (supervisor/worker_memory.h) four times a period:
//  - a worker without a memory cgroup: the anonymous memory resident in its process group
//    (RssAnon of the worker and of every process model code started; /proc/PID/status,
//    readable even for non-dumpable workers of another uid) must stay within its limit.
//    Anonymous memory is what allocations grow; client arenas it maps and the archives'
//    page cache are not the worker's to answer for. Memory in files (tmpfs, memfds written
//    without mapping) escapes this count: only a cgroup bounds it.
//  - a worker with one: its cgroup's limit file must still say what shoald wrote (model
//    code that can write there must not raise its own limit).
// It kills nobody itself: `on_over` (called on the sampling thread, once per pid) tells
// the pool, which kills the worker on its loop.
// Thread-safety: every method may be called from any thread; the loop calls Track/Untrack
// and Get, the sampling thread only reads /proc. Figures are at most one period old.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
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

// What the sampler checks of a worker's memory limit.
struct MemoryWatch {
  uint64_t limit_bytes = 0;  // enforced here (no cgroup): its process group's anonymous memory; 0 = none
  std::string limit_file;    // its cgroup's limit file, which must keep holding `limit_text`
  std::string limit_text;
};

class ProcessMemorySampler {
 public:
  // `on_over(pid, why)` runs on the sampling thread when a watched worker breaks its limit.
  using OverLimitFn = std::function<void(pid_t pid, const std::string& why)>;
  explicit ProcessMemorySampler(std::chrono::milliseconds period = std::chrono::milliseconds(1000),
                                OverLimitFn on_over = nullptr);
  ~ProcessMemorySampler();  // stops and joins the thread
  ProcessMemorySampler(const ProcessMemorySampler&) = delete;
  ProcessMemorySampler& operator=(const ProcessMemorySampler&) = delete;

  void Track(pid_t pid, MemoryWatch watch = {});  // sampled from the next round on (sooner: wakes the thread)
  // From now on `pid`'s figures come from `fd`, its smaps_rollup opened by the process
  // itself (taken; closed by Untrack).
  void ReadFrom(pid_t pid, int fd);
  void Untrack(pid_t pid);
  ProcessMemory Get(pid_t pid) const;  // the last figures, zeros before the first sample

 private:
  void Loop();
  // Checks the watched workers' limits; calls on_over_ for those that broke them.
  void CheckLimits(const std::map<pid_t, MemoryWatch>& watches);

  const std::chrono::milliseconds period_;
  const OverLimitFn on_over_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::map<pid_t, ProcessMemory> figures_;  // GUARDED_BY(mu_)
  std::map<pid_t, MemoryWatch> watches_;    // GUARDED_BY(mu_): workers whose limits it checks
  std::map<pid_t, std::shared_ptr<const int>> files_;  // GUARDED_BY(mu_); the fd closes with the last holder
  bool stop_ = false;                       // GUARDED_BY(mu_)
  bool fresh_ = false;                      // GUARDED_BY(mu_): a pid was added since the last round
  std::thread thread_;
};

}  // namespace shoal
