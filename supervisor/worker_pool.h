// WorkerPool: the shoal-worker processes and their slots.
//
// Owns every WorkerHandle (process, socket, requests in flight, the job of each
// interpreter, models ready in it, arenas it was sent), the zygote link, restart backoff,
// resizing and recycling, the per-worker memory figures, and each worker's memory limit
// (its cgroup, or the sampler's watch: supervisor/worker_memory.h). Spawns through the zygote
// (exec when there is none); learns of deaths from the reaper (SIGCHLD, waitpid WNOHANG)
// and from EOF, never by blocking. Owns the workers' temporary folders (WorkerTmp). Every request to a worker is answered exactly once:
// with the reply, WORKER_CRASHED if the worker dies first, or UNAVAILABLE at shutdown.
// Serves the scheduler as its SlotPool and the registry as its ModelHosts; tells the
// service what happened through PoolListener.
// Thread-safety: loop thread only; callbacks run on the loop thread.
#pragma once

#include <boost/asio.hpp>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "supervisor/arena_table.h"
#include "supervisor/config.h"
#include "supervisor/gpu_placement.h"
#include "supervisor/gpu_weights.h"
#include "supervisor/model_registry.h"
#include "supervisor/process_memory.h"
#include "supervisor/worker_memory.h"
#include "supervisor/scheduler.h"
#include "supervisor/worker_handle.h"
#include "supervisor/worker_tmp.h"
#include "supervisor/worker_user.h"
#include "supervisor/zygote_link.h"

namespace shoal {

class PoolListener {
 public:
  virtual ~PoolListener() = default;
  // A new worker has a socket: its start-up loads should begin (then MarkStarted).
  virtual void OnWorkerSpawned(ModelHosts::Worker worker) = 0;
  // A worker died; `charges` name the models it was running or loading and whose job it
  // was (none when shoald killed it for a deadline: the client chose that deadline).
  virtual void OnWorkerDied(const std::vector<CrashCharge>& charges, const std::string& how) = 0;
  // Slots were freed or workers retired: time to dispatch.
  virtual void OnSlotsChanged() = 0;
};

class WorkerPool : public SlotPool, public ModelHosts {
 public:
  // `config`, `arenas` and `listener` must outlive the pool. The pool registers the output
  // arenas workers announce in `arenas` and forgets them when the worker goes.
  WorkerPool(boost::asio::io_context& io, const SupervisorConfig& config, ArenaTable* arenas,
             PoolListener* listener);
  ~WorkerPool() override;  // kills what is left and waits for it (after the loop stopped)
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Starts the zygote (if configured) and config.workers workers. `user`: the user
  // workers switch to (supervisor/worker_user.h), nullopt to keep shoald's uid.
  void Start(std::optional<WorkerUser> user = std::nullopt);
  // SIGCHLD: collects every exited child (WNOHANG).
  void Reap();
  // Children of shoald that are not workers (shoal-http): Reap hands each exited pid it
  // does not know to `claim` first (true: it was that child's, and is handled).
  void set_other_children(std::function<bool(pid_t pid, int wait_status)> claim) { other_children_ = std::move(claim); }
  // The worker's start-up loads are done (a crash after this is not a start-up crash).
  void MarkStarted(Worker worker);
  // Starts or retires workers to match config.workers; restarts the zygote when the
  // sandbox settings changed (new limits apply to workers started from then on).
  void Resize(bool sandbox_changed);
  // A client arena was dropped: workers that have it unmap it.
  void DropArena(uint64_t arena);
  // A client hung up: every worker drops the output arenas it made for it.
  void DropClient(uint64_t client);
  // A client releases blocks of the output arena `local` of worker (slot, generation); a
  // worker that is gone is not asked (its arenas died with it).
  void Release(int slot, uint64_t generation, uint64_t local, const std::vector<uint64_t>& blocks);
  // Shutdown: no more respawns; Kill answers every pending request UNAVAILABLE and kills
  // every process (the reaper or the destructor collects them).
  void Stop();
  void KillAll();
  // Whether `pgid` is the process group of a worker (model code and what it started).
  bool IsWorkerGroup(pid_t pgid) const;
  // Every worker is live and has each of `models` ready.
  bool AllServe(const std::vector<std::string>& models) const;

  struct InterpInfo {
    bool busy = false;
    uint64_t job = 0;
    std::string model;
    uint64_t next = 0;  // the job sent to it ahead of its turn (send_ahead_ms); 0: none
    std::string next_model;
  };
  struct WorkerInfo {
    int slot = 0;
    pid_t pid = -1;
    std::string state;  // idle, busy, partly busy, restarting
    std::vector<InterpInfo> interps;
    std::vector<std::string> models;
    ProcessMemory memory;
    uint64_t memory_limit = 0;    // bytes; 0: none
    std::string memory_by;        // who enforces it: "cgroup v1", "cgroup v2", "sampler" (empty: no limit)
    uint64_t client_arenas = 0;   // client arenas whose fd it holds
    uint64_t output_bytes = 0;    // in output blocks not yet released
    uint64_t output_arenas = 0;   // output arenas it has mapped
    std::string gpu;              // PCI bus id of its GPU; empty: none
  };
  std::vector<WorkerInfo> Describe() const;
  std::vector<GpuWeights::Held> GpuWeightCopies() const { return weights_.List(); }
  pid_t zygote_pid() const { return zygote_.pid(); }
  uint64_t restarts() const { return restarts_; }

  // SlotPool
  std::optional<Slot> Pick(const Job& job, bool* any_free) const override;
  void Run(Slot slot, const std::shared_ptr<Job>& job, ReplyFn done) override;
  void RunBatch(Slot slot, const std::vector<std::shared_ptr<Job>>& jobs, MemberReplyFn done) override;
  bool IsRunning(const Job& job) const override;
  void Terminate(const Job& job, const std::string& why) override;
  void FreeBlocks(const Job& job, uint64_t arena, const std::vector<uint64_t>& blocks) override;
  int RunningJobs(const std::string& model = {}) const override;
  size_t Serving(const std::string& model) const override;
  // Whether some slot on GPU `bus` runs models loaded for `device`, now or once its worker
  // (re)starts: where a job's GPU inputs are decides which workers may run it.
  bool PlacesOnGpu(const std::string& device, const std::string& bus) const;

  // ModelHosts
  std::vector<Worker> Live() const override;
  void Load(Worker worker, const std::string& name, const ArchiveRef& archive, const std::string& device,
            std::function<bool()> keep, LoadDone done) override;
  bool Places(Worker worker, const std::string& device) const override;
  // A load's device checked against the GPUs workers are placed on (supervisor/gpu_placement.h).
  Result<std::string> CheckDevice(const std::string& model, const std::string& device) const;
  bool KnowsGpu(const std::string& bus) const { return gpus_.Knows(bus); }
  bool HasOrLoads(Worker worker, const std::string& name) const override;
  void Unload(const std::string& name) override;

 private:
  WorkerHandle* Find(int slot, uint64_t generation) const;  // the live worker, or nullptr
  // A job about to run on interpreter `interp` of `w`: its arenas sent, where it runs noted.
  void Place(WorkerHandle* w, int interp, Job* job);
  // The infer request's common part, for `job` alone or (batch) a batch it leads.
  void BeginInfer(Writer* m, int interp, const Job& job, bool batch) const;
  // A reply of the run `lead` started came: its slot is free once all its jobs are answered.
  void FreeSlotIfDone(const std::shared_ptr<Job>& lead, uint64_t generation);
  std::vector<std::string> WorkerArgs() const;
  void Spawn(int slot);
  void ScheduleRespawn(int slot, std::chrono::milliseconds delay);
  void OnFrame(WorkerHandle* w, const std::string& body, std::vector<int>* fds);
  // memory_file notice: the worker's own smaps_rollup, read by the sampler from now on.
  void TakeMemoryFile(WorkerHandle* w, std::vector<int>* fds);
  // Registers the output arenas a job's reply announces (their fds come with it).
  void RegisterOutputArenas(WorkerHandle* w, uint64_t rid, const MapView& reply, std::vector<int>* fds);
  void OnGone(WorkerHandle* w, std::string how);
  void TerminateWorker(WorkerHandle* w, const std::string& why);
  void RetireIfDone(WorkerHandle* w);
  // Sends a request with `fds` attached; `fn` gets its one answer.
  void Send(WorkerHandle* w, uint64_t id, std::string_view body, ReplyFn fn,
            std::vector<std::shared_ptr<OwnedFd>> fds = {});
  void SendUnload(WorkerHandle* w, const std::string& model);
  // Sends a client arena's fd unless the worker has it; first drops the least recently used
  // ones that no running job of the worker reads, past worker_arenas / worker_arena_mb.
  void SendArenaIfNeeded(WorkerHandle* w, uint64_t arena);
  void ArmLoadDeadline(WorkerHandle* w, uint64_t rid);  // load_timeout_ms from now
  void SendRelease(WorkerHandle* w, uint64_t local, const std::vector<uint64_t>& blocks);
  // Its memory limit, and a cgroup for it where there are; the fd a new worker joins it by.
  std::shared_ptr<OwnedFd> LimitMemory(WorkerHandle* w);
  // Its pid is known: the sampler watches its limit (enforcing it when it has no cgroup).
  void WatchMemory(WorkerHandle* w);
  // The sampler found it over its limit: it is killed, and its jobs are told why.
  void OnOverLimit(pid_t pid, const std::string& why);
  // Its process is gone: was it killed for its memory? Then its cgroup goes.
  void ForgetMemory(WorkerHandle* w);

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  ArenaTable* arenas_;
  PoolListener* listener_;
  ZygoteLink zygote_;
  WorkerTmp tmp_;  // the workers' private temporary folders
  std::unique_ptr<WorkerMemory> limits_;  // made by Start (it may move shoald into a leaf cgroup)
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);  // for work the sampler posts
  ProcessMemorySampler memory_;  // after alive_: its thread posts to the loop until it is joined
  GpuPlacement gpus_;                                  // which GPU each slot's worker uses
  GpuWeights weights_;                                 // models' weights on each GPU, shared
  std::map<std::string, std::string> model_devices_;   // model -> the device it was loaded for
  bool stopping_ = false;
  uint64_t next_generation_ = 1;
  uint64_t next_request_ = uint64_t{1} << 62;  // control requests; job requests carry the job id (below)
  std::map<int, std::unique_ptr<WorkerHandle>> workers_;
  // Exits reaped before the zygote told us the pid (a worker that died at once): pid ->
  // wait status, claimed when the pid arrives. Bounded.
  std::map<pid_t, int> early_exits_;
  std::optional<WorkerUser> user_;  // who workers run as (nullopt: shoald's uid)
  std::string new_copies_;          // user_'s folder for K > 1 library copies (worker --new-copies)
  std::map<int, int> crash_streak_;  // slot -> consecutive crashes before a worker finished starting
  uint64_t restarts_ = 0;
  std::function<bool(pid_t, int)> other_children_;
};

}  // namespace shoal
