// WorkerMemory: the memory limit of each worker, and the memory cgroups that enforce it
// where shoald can make them.
//
// The limit is worker_memory_mb, or by default (auto) a share of what shoald may use: 3/4
// of MemTotal, or of shoald's own cgroup limit when that is lower, divided by `workers`,
// and at least 512 MiB (the rest is for shoald, the zygote, clients' arenas and the page
// cache that holds the weights); 0 turns it off.
//
// Where shoald can make memory cgroups, each worker gets one of its own: its limit is
// memory.max (v2) or memory.limit_in_bytes (v1); the worker joins it before it runs any
// model code (the zygote's child writes "0" into the group's cgroup.procs, which shoald
// opened and passed with the fork request), so everything model code starts is in it
// too; the kernel kills inside the group when it passes the limit; the group is removed
// when the worker is gone. Where shoald may make them:
//  - cgroup v2: its own cgroup, when shoald is its only process and may write it (a
//    systemd unit with Delegate=yes, or root): shoald moves itself into a leaf `shoald`
//    (a cgroup with children holds no processes), enables the memory controller for
//    the children and makes `worker-SLOT-GEN` beside it;
//  - cgroup v1: a folder `shoald-PID` in its cgroup of the memory hierarchy, when it may
//    write there (root), with `worker-SLOT-GEN` inside.
// Elsewhere (or with worker_memory_cgroup = no) shoald's sampler enforces the limit
// (supervisor/process_memory.h). Who enforces what is in `status`.
// Thread-safety: loop thread only. The cgroup files are small kernel files: reading and
// writing them does not block.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>

#include "shoal/status.h"
#include "supervisor/async_channel.h"
#include "supervisor/config.h"

namespace shoal {

// A worker's memory cgroup, made before the worker exists.
struct WorkerCgroup {
  std::string name;                 // "worker-3-17"
  std::shared_ptr<OwnedFd> procs;   // its cgroup.procs, open for writing: "0" (or a pid) joins it
  std::string limit_file;           // where the limit is, and the text shoald wrote there: model
  std::string limit_text;           // code that could write it must not raise it (the sampler checks)
};

class WorkerMemory {
 public:
  // Looks for a place to make memory cgroups when `use_cgroups`; logs what it found. In
  // cgroup v2 this may move shoald into a leaf of its own cgroup: call it before shoald
  // starts any child process that should stay beside it.
  explicit WorkerMemory(bool use_cgroups);
  ~WorkerMemory();  // removes the groups it made (after the workers were reaped)
  WorkerMemory(const WorkerMemory&) = delete;
  WorkerMemory& operator=(const WorkerMemory&) = delete;

  // Bytes each worker may use under `config` (0: no limit).
  uint64_t LimitFor(const SupervisorConfig& config) const;
  // "cgroup v2", "cgroup v1", or "" when workers get no cgroup.
  const std::string& cgroup_kind() const { return kind_; }

  // Makes the group of a new worker with `limit` bytes. An error says why; that worker is
  // then left to the sampler.
  Result<WorkerCgroup> Create(const std::string& name, uint64_t limit);
  // Whether process `pid` is in group `name` (it joined).
  bool Holds(const std::string& name, pid_t pid) const;
  // How many times the kernel killed a process of group `name` for passing its limit.
  uint64_t OomKills(const std::string& name) const;
  // Kills what is left in the group (v2: cgroup.kill) and removes it; a group whose
  // processes are still exiting is removed by a later RemoveLeftovers.
  void Remove(const std::string& name);
  void RemoveLeftovers();

 private:
  bool OpenV2(std::string* why);
  bool OpenV1(std::string* why);
  std::string PathOf(const std::string& name) const { return parent_ + "/" + name; }

  std::string kind_;     // empty: no cgroups
  std::string parent_;   // the folder worker groups are made in
  std::string limit_file_;  // memory.max or memory.limit_in_bytes
  std::string events_file_;  // memory.events or memory.oom_control (both say "oom_kill N")
  bool own_parent_ = false;  // v1: parent_ is shoald-PID, made here and removed at the end
  uint64_t usable_bytes_ = 0;  // MemTotal, or shoald's cgroup limit when lower
  std::set<std::string> groups_;    // made and not yet removed
  std::set<std::string> leftovers_;  // removal pending: processes still exiting
};

}  // namespace shoal
