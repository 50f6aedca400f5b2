// WorkerHandle: the supervisor's view of one shoal-worker process, and how to start one.
//
// A worker hosts K interpreters (shoald --interpreters), each running one job at a time:
// K slots, jobs[i] is interpreter i's job. Requests to it carry ids; each pending
// id has a callback that runs with the reply, or with WORKER_CRASHED if the worker dies
// first, so no request is ever left without an answer. Thread-safety: loop thread only.
#pragma once

#include <sys/types.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "protocol/messages.h"
#include "base/subprocess.h"
#include "supervisor/async_channel.h"
#include "supervisor/model_registry.h"
#include "supervisor/worker_memory.h"

namespace shoal {

struct Job;

struct WorkerHandle {
  using ReplyFn = std::function<void(const Status& st, const MapView* reply)>;

  int slot = 0;         // index in the pool; a replacement takes the same slot
  uint64_t generation = 0;
  pid_t pid = -1;       // -1 until the zygote says which process it forked
  bool gone = false;
  bool ready = false;   // its start-up loads are done
  uint64_t jobs_run = 0;
  std::shared_ptr<AsyncChannel> channel;
  std::chrono::steady_clock::time_point started;
  std::set<std::string> ready_models;  // loaded and servable in this worker
  // Client arenas whose fd this worker holds, most recently used first (bounded by
  // worker_arenas, and by worker_arena_mb for host arenas and again for GPU arenas: the
  // least recently used idle one is dropped first).
  struct HeldArena {
    std::list<uint64_t>::iterator lru;
    uint64_t bytes = 0;
    bool gpu = false;
  };
  std::list<uint64_t> arena_lru;
  std::map<uint64_t, HeldArena> arenas;  // by id
  uint64_t arena_bytes = 0;      // of host arenas
  uint64_t gpu_arena_bytes = 0;  // of GPU arenas (GPU memory the client allocated; mapped here)
  // What each owner in the worker (shm/output_arenas.h) last said it holds.
  struct OutputUsage {
    uint64_t bytes = 0;
    uint64_t arenas = 0;
  };
  std::map<uint64_t, OutputUsage> output_usage;  // owner tag -> usage
  std::map<uint64_t, ReplyFn> pending;  // request id -> callback
  std::map<uint64_t, std::string> pending_model;  // request id -> model it runs or loads
  // The GPU weights' descriptor a load's reply brought (its upload), by request id; taken
  // by the load's reply handler.
  std::map<uint64_t, std::shared_ptr<OwnedFd>> uploaded_weights;
  bool retiring = false;               // finishes its job, then is closed (recycling, shrink)
  // A CUDA error poisoned it (its reply said so): charged to that job's model and client.
  std::optional<CrashCharge> poisoned_by;
  bool killed_for_deadline = false;    // shoald killed it: a job outlived its deadline's grace
  // Its memory limit (supervisor/worker_memory.h): bytes (0: none), who enforces it
  // ("cgroup v1", "cgroup v2", "sampler"), its cgroup's name if it has one, and why it was
  // killed for its memory (empty: it was not).
  uint64_t memory_limit = 0;
  std::string memory_by;
  WorkerCgroup cgroup;  // its procs fd is held only until the worker joined
  std::string memory_exceeded;
  // Per interpreter: its in-flight inference, or null; a batch is its first member, which
  // holds the others (Job::batch).
  std::vector<std::shared_ptr<Job>> jobs;
  // Per interpreter: the job sent to it ahead of its turn (send_ahead_ms), which it starts the
  // moment jobs[i] ends; never a batch, and only behind a job that is not one. Not running
  // yet: if the worker dies first it is queued again, not charged (Job::ahead).
  std::vector<std::shared_ptr<Job>> ahead;
  std::vector<std::string> last_model;     // per interpreter: the model it ran (or runs next) last
  std::unique_ptr<boost::asio::steady_timer> kill_timer;
  // Its /proc/self/smaps_rollup, opened by the worker and handed over (`memory_file`): a
  // non-root shoald cannot open a non-dumpable worker's. Given to the sampler with the pid.
  std::shared_ptr<OwnedFd> memory_file;
  // load request id -> (model, its deadline: null until the worker's pid is known)
  std::map<uint64_t, std::pair<std::string, std::unique_ptr<boost::asio::steady_timer>>> load_deadlines;

  std::string Describe() const;
  int Running() const;        // interpreters running a job
  // The job (alone or a member of a batch) that request `id` runs, or null.
  std::shared_ptr<Job> JobOf(uint64_t id) const;
  int FreeInterpreter(const std::string& model) const;  // a free one (preferring one that ran
                                                        // `model` last), or -1
  // A busy interpreter a job of `model` may be sent ahead to: it runs one job (not a batch)
  // of a model whose jobs took less than `limit` on average when it started (Job::expected_ms),
  // which has run less than `limit` so far, and has none waiting; preferring one whose job is
  // of `model`, then the one whose job started first. -1: none.
  int AheadInterpreter(const std::string& model, std::chrono::milliseconds limit) const;
};

// The job in `jobs` (per interpreter, as WorkerHandle::jobs or ::ahead) or in a batch one
// of them leads whose id is `id`, or null.
std::shared_ptr<Job> FindJob(const std::vector<std::shared_ptr<Job>>& jobs, uint64_t id);

struct SpawnedProcess {
  pid_t pid;
  int sock;  // the supervisor's end of the socketpair
};

// fork + exec `binary --fd 3 ARGS...`, with the child's end of a fresh socketpair as fd 3
// and a parent-death signal; every other descriptor above 2 is closed in the child.
Result<SpawnedProcess> SpawnWorkerProcess(const std::string& binary, const std::vector<std::string>& args);

}  // namespace shoal
