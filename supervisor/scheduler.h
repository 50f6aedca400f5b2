// Scheduler: accepted jobs from the queue to free slots, and every job's answer.
//
// Owns the job queue (in arrival order; a re-run after a crash goes first), per-model
// queue counts and run-time averages (for OVERLOADED retry hints), each job's deadline, and
// fairness between the clients (uids) of one model: a free slot takes the queued job whose
// client has the fewest jobs of that model running (earliest first among equals), and a
// full queue makes room for a newcomer by dropping the newest job of the client that holds
// the most of it. Also
// the rule that every accepted job is answered exactly once: with its outputs, the model's
// error, TIMEOUT, WORKER_CRASHED or UNAVAILABLE. Dynamic batching: a job of a model whose
// policy batches (Job::batching) takes with it up to max_batch - 1 queued jobs of that model
// whose inputs agree on all but the first dimension (BatchCompatible), oldest first, and
// the group is held (a timer, never past a member's deadline) until it is full, reaches a
// preferred size, or its oldest job waited max_delay_us; every member keeps its own
// deadline and answer. It knows slots only through SlotPool (the
// worker pool in shoald, a fake in tests) and clients only through their sessions.
// Thread-safety: loop thread only; every callback runs on the loop thread.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "supervisor/config.h"
#include "supervisor/deadline_queue.h"
#include "supervisor/job.h"
#include "supervisor/metrics.h"
#include "supervisor/output_check.h"

namespace shoal {

class ArenaTable;

// The longest deadline a job gets (2^40 ms, about 35 years); a longer timeout_ms is this.
constexpr uint64_t kMaxTimeoutMs = uint64_t{1} << 40;

// What the scheduler needs of the worker pool.
class SlotPool {
 public:
  virtual ~SlotPool() = default;
  struct Slot {
    int worker = -1;
    int interp = -1;
  };
  // A free interpreter of a live worker that serves `job`'s model and, when its inputs
  // are on a GPU (job.gpu), runs on that GPU (it maps no other GPU's memory): preferably
  // one that ran the model last, then the least busy worker; with none free and
  // send_ahead_ms, a busy one whose short job ends soon may take it ahead of its turn
  // (never for a batching model); or nullopt. *any_free says whether any slot at all could take a job.
  virtual std::optional<Slot> Pick(const Job& job, bool* any_free) const = 0;
  // Starts `job` on `slot` (fills job->worker/interp/generation/started), or sends it
  // ahead when the slot is busy (Job::ahead); `done` runs once.
  virtual void Run(Slot slot, const std::shared_ptr<Job>& job, ReplyFn done) = 0;
  using MemberReplyFn = std::function<void(const std::shared_ptr<Job>& job, const Status& st, const MapView* reply)>;
  // Starts `jobs` (2 or more, batch-compatible, of one model) on `slot` as one run of the
  // model (one message to the worker); `done` runs once per member with its own reply. The
  // slot is taken until every member is answered.
  virtual void RunBatch(Slot slot, const std::vector<std::shared_ptr<Job>>& jobs, MemberReplyFn done) = 0;
  // Whether `job` (alone or a member of a batch) still runs on the slot it was started on;
  // false while it was sent ahead and waits there (Job::ahead).
  virtual bool IsRunning(const Job& job) const = 0;
  // Kills the worker that runs `job` (SIGTERM, then SIGKILL).
  virtual void Terminate(const Job& job, const std::string& why) = 0;
  // Tells the worker that ran `job` to free output blocks nobody will read, in its output
  // arena `arena` (the worker's own id for it).
  virtual void FreeBlocks(const Job& job, uint64_t arena, const std::vector<uint64_t>& blocks) = 0;
  virtual int RunningJobs(const std::string& model = {}) const = 0;  // of one model, or all (sent ahead too)
  virtual size_t Serving(const std::string& model) const = 0;          // live workers that serve it
};

// Runs of more than one job of a model (dynamic batching), and the jobs they ran.
struct BatchCounts {
  uint64_t batches = 0;
  uint64_t batched_jobs = 0;
};

// What the model registry needs of the scheduler.
class JobQueue {
 public:
  virtual ~JobQueue() = default;
  // Answers every queued job of `model` with why(job) and removes it from the queue.
  virtual void FailQueued(const std::string& model, const std::function<Status(const Job&)>& why) = 0;
  // Jobs of `model` queued or running; queued only.
  virtual size_t Pending(const std::string& model) const = 0;
  virtual size_t Queued(const std::string& model) const = 0;
  virtual BatchCounts Batches(const std::string& /*model*/) const { return {}; }
  virtual void Dispatch() = 0;
};

// Whether jobs `a` and `b` can run in one batch: same model, GPU and outputs choice, the
// same number of inputs, each with the same dtype and the same shape but for the first
// dimension, and within each job every input with the same first dimension (its rows).
bool BatchCompatible(const Job& a, const Job& b);

class Scheduler : public JobQueue {
 public:
  using Clock = std::chrono::steady_clock;
  // `config`, `pool`, `arenas` and `metrics` must outlive the scheduler. It counts every
  // answer, and each job's time in the queue and on its worker, into `metrics`.
  Scheduler(boost::asio::io_context& io, const SupervisorConfig& config, SlotPool* pool, ArenaTable* arenas,
            Metrics* metrics);
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Runs at the start of every Dispatch (shoald: unload drains and the shutdown drain).
  void set_before_dispatch(std::function<void()> fn) { before_dispatch_ = std::move(fn); }

  // Queues a job the front has validated; arms its deadline (`timeout_ms`, 0 = none).
  // OVERLOADED (with *retry_after_ms set) when the model's queue is full.
  Status Submit(const std::shared_ptr<Job>& job, uint64_t timeout_ms, uint64_t* retry_after_ms);
  // A client hung up: its queued jobs are dropped; its running ones finish unanswered.
  void DropClient(const ClientSession* session);
  // Shutdown: queued jobs are answered UNAVAILABLE, new ones refused, Dispatch only drains.
  void Stop();
  bool stopped() const { return stopped_; }

  void FailQueued(const std::string& model, const std::function<Status(const Job&)>& why) override;
  size_t Pending(const std::string& model) const override;
  size_t Queued(const std::string& model) const override;
  void Dispatch() override;

  size_t queued() const { return queue_.size(); }
  BatchCounts Batches(const std::string& model) const override;
  uint64_t jobs_done() const { return jobs_done_; }
  uint64_t jobs_failed() const { return jobs_failed_; }

 private:
  struct ModelStats {
    size_t queued = 0;
    double avg_ms = 0;  // moving average of its jobs' run time
    std::map<uid_t, size_t> queued_by;   // per client
    std::map<uid_t, size_t> running_by;  // per client
    BatchCounts batches;
  };
  // The queued job to run next in place of *from (see above): of its model, and with
  // its inputs on the same GPU (or none), from `from` on.
  std::deque<std::shared_ptr<Job>>::iterator FairestOf(std::deque<std::shared_ptr<Job>>::iterator from);
  // The queue of job->model is full: drops the newest job of the client holding the most of
  // it if that is more than job's client would hold. False when nothing could be dropped.
  bool MakeRoom(const Job& job);
  void Enqueue(const std::shared_ptr<Job>& job, bool front);
  // The jobs `lead` (queued, of a batching model) would run with now: itself first, then
  // the oldest queued jobs compatible with it, at most max_batch in all.
  std::vector<std::shared_ptr<Job>> BatchFor(const std::shared_ptr<Job>& lead) const;
  // When `group` must go at the latest (its oldest job's max_delay_us), or nullopt when it
  // must go now: full, a preferred size, that time passed, or a member's deadline would
  // pass before it.
  std::optional<Clock::time_point> HoldUntil(const std::vector<std::shared_ptr<Job>>& group) const;
  void StartOne(SlotPool::Slot slot, const std::shared_ptr<Job>& job);
  void StartBatch(SlotPool::Slot slot, const std::vector<std::shared_ptr<Job>>& group);
  // Whether every member of `job`'s batch still running has passed its deadline and grace.
  bool BatchOverdue(const Job& job) const;
  // Removes *it from the queue and advances `it` past it.
  std::shared_ptr<Job> Dequeue(std::deque<std::shared_ptr<Job>>::iterator& it);
  void OnReply(const std::shared_ptr<Job>& job, const Status& st, const MapView* reply);
  void OnDeadline(const std::shared_ptr<Job>& job);
  // Sends the job's one answer, with `fds` attached (output arenas new to the client).
  void Answer(const std::shared_ptr<Job>& job, std::string_view body, std::vector<std::shared_ptr<OwnedFd>> fds = {});
  // Gives output blocks nobody will read back to the worker that owns them.
  void ReleaseBlocks(const Job& job, const std::vector<WorkerBlock>& blocks);
  void Fail(const std::shared_ptr<Job>& job, const Status& st, std::string_view traceback = {});

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  SlotPool* pool_;
  ArenaTable* arenas_;
  Metrics* metrics_;
  std::function<void()> before_dispatch_;
  bool stopped_ = false;
  std::deque<std::shared_ptr<Job>> queue_;
  boost::asio::steady_timer hold_timer_;  // dispatches when the earliest held batch must go
  DeadlineQueue deadlines_;               // the deadline of every job not answered yet
  std::map<std::string, ModelStats> stats_;
  uint64_t jobs_done_ = 0;
  uint64_t jobs_failed_ = 0;
};

}  // namespace shoal
