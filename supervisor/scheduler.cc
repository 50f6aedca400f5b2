#include "supervisor/scheduler.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "protocol/channel.h"
#include "shm/output_arenas.h"
#include "supervisor/arena_table.h"
#include "supervisor/output_check.h"

namespace shoal {

namespace asio = boost::asio;

namespace {

// Within one job every input has the same first dimension (its rows); 0-d inputs: none.
std::optional<int64_t> Rows(const Job& job) {
  if (job.inputs.empty()) return std::nullopt;
  int64_t rows = -1;
  for (const auto& d : job.inputs) {
    if (d.shape.empty() || (rows >= 0 && d.shape[0] != rows)) return std::nullopt;
    rows = d.shape[0];
  }
  return rows;
}

}  // namespace

bool BatchCompatible(const Job& a, const Job& b) {
  if (a.model != b.model || a.gpu != b.gpu || a.host_outputs != b.host_outputs || a.inputs.size() != b.inputs.size()) {
    return false;
  }
  // A structured call (args/kwargs) or another method than forward is not batched: the
  // rows of its inputs need not be the model's batch dimension.
  if (a.call.structured() || b.call.structured() || !a.call.method.empty() || !b.call.method.empty()) return false;
  if (!Rows(a) || !Rows(b)) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i) {
    const Descriptor& x = a.inputs[i];
    const Descriptor& y = b.inputs[i];
    if (x.dtype != y.dtype || x.shape.size() != y.shape.size() ||
        !std::equal(x.shape.begin() + 1, x.shape.end(), y.shape.begin() + 1)) {
      return false;
    }
  }
  return true;
}

Scheduler::Scheduler(asio::io_context& io, const SupervisorConfig& config, SlotPool* pool, ArenaTable* arenas,
                     Metrics* metrics)
    : io_(io), config_(config), pool_(pool), arenas_(arenas), metrics_(metrics), hold_timer_(io),
      deadlines_(io, [this](const std::shared_ptr<Job>& job) { OnDeadline(job); }) {}

namespace {
double Seconds(Scheduler::Clock::duration d) { return std::chrono::duration<double>(d).count(); }
}  // namespace

Status Scheduler::Submit(const std::shared_ptr<Job>& job, uint64_t timeout_ms, uint64_t* retry_after_ms) {
  if (stopped_) return Status(Code::kUnavailable, "shoald is shutting down; retry on another instance");
  ModelStats& stats = stats_[job->model];
  if (stats.queued >= config_.max_queue && !MakeRoom(*job)) {
    // A hint: the time the slots need to work through the queue ahead, at least 1 ms.
    double per_job = stats.avg_ms > 0 ? stats.avg_ms : 1.0;
    *retry_after_ms = static_cast<uint64_t>(
        std::max(1.0, per_job * static_cast<double>(stats.queued) / static_cast<double>(std::max<size_t>(pool_->Serving(job->model), 1))));
    return Status(Code::kOverloaded, "model '" + job->model + "' has " + std::to_string(stats.queued) +
                                         " jobs queued (max_queue); retry in about " +
                                         std::to_string(*retry_after_ms) + " ms");
  }
  job->accepted = Clock::now();
  if (timeout_ms > 0) {
    // A client's timeout_ms is any uint64: past kMaxTimeoutMs (35 years) it is that, not an
    // overflow into the past.
    timeout_ms = std::min(timeout_ms, kMaxTimeoutMs);
    deadlines_.Add(job, job->accepted + std::chrono::milliseconds(timeout_ms));
  }
  Enqueue(job, false);
  Dispatch();
  return Status::Ok();
}

void Scheduler::Enqueue(const std::shared_ptr<Job>& job, bool front) {
  if (front) {
    queue_.push_front(job);
  } else {
    queue_.push_back(job);
  }
  ModelStats& stats = stats_[job->model];
  ++stats.queued;
  ++stats.queued_by[job->client_uid];
}

bool Scheduler::MakeRoom(const Job& job) {
  ModelStats& stats = stats_[job.model];
  uid_t biggest = job.client_uid;
  size_t most = 0;
  for (const auto& [uid, n] : stats.queued_by) {
    if (n > most) std::tie(biggest, most) = std::tie(uid, n);
  }
  auto mine = stats.queued_by.count(job.client_uid) ? stats.queued_by[job.client_uid] : 0;
  if (biggest == job.client_uid || most <= mine + 1) return false;
  for (auto it = queue_.end(); it != queue_.begin();) {
    --it;
    if ((*it)->model != job.model || (*it)->client_uid != biggest) continue;
    auto dropped = Dequeue(it);
    Fail(dropped, Status(Code::kOverloaded, "model '" + job.model + "' has " + std::to_string(config_.max_queue) +
                                                " jobs queued (max_queue), " + std::to_string(most) + " of them from uid " +
                                                std::to_string(biggest) + ": job " + std::to_string(dropped->id) +
                                                " was dropped to make room for another client's; retry later"));
    return true;
  }
  return false;
}

std::deque<std::shared_ptr<Job>>::iterator Scheduler::FairestOf(std::deque<std::shared_ptr<Job>>::iterator from) {
  const std::string& model = (*from)->model;
  const std::string& gpu = (*from)->gpu;  // the slot Pick found runs on that GPU only
  const ModelStats& stats = stats_[model];
  auto running = [&](uid_t uid) {
    auto r = stats.running_by.find(uid);
    return r == stats.running_by.end() ? size_t{0} : r->second;
  };
  auto best = from;
  size_t best_running = running((*from)->client_uid);
  for (auto it = std::next(from); it != queue_.end() && best_running > 0; ++it) {
    if ((*it)->model != model || (*it)->gpu != gpu) continue;
    size_t r = running((*it)->client_uid);
    if (r < best_running) std::tie(best, best_running) = std::tie(it, r);
  }
  return best;
}

std::shared_ptr<Job> Scheduler::Dequeue(std::deque<std::shared_ptr<Job>>::iterator& it) {
  auto job = *it;
  it = queue_.erase(it);  // erasing from a deque invalidates every iterator but the one returned
  if (auto s = stats_.find(job->model); s != stats_.end() && s->second.queued > 0) {
    --s->second.queued;
    if (auto q = s->second.queued_by.find(job->client_uid); q != s->second.queued_by.end() && --q->second == 0) {
      s->second.queued_by.erase(q);
    }
  }
  return job;
}

void Scheduler::DropClient(const ClientSession* session) {
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->client.lock().get() == session) {
      auto job = Dequeue(it);
      job->answered = true;
      deadlines_.Remove(job.get());
    } else {
      ++it;
    }
  }
}

void Scheduler::Stop() {
  stopped_ = true;
  auto queue = std::move(queue_);
  queue_.clear();
  for (auto& [model, s] : stats_) s.queued = 0;
  for (const auto& job : queue) {
    Fail(job, Status(Code::kUnavailable, "shoald is shutting down; job " + std::to_string(job->id) + " of model '" +
                                             job->model + "' was not started"));
  }
}

void Scheduler::FailQueued(const std::string& model, const std::function<Status(const Job&)>& why) {
  // Taken out first, answered after: an answer whose send fails closes that client, which
  // drops its other queued jobs from the queue (DropClient) while we would walk it.
  std::vector<std::shared_ptr<Job>> failed;
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->model == model) {
      failed.push_back(Dequeue(it));
    } else {
      ++it;
    }
  }
  for (const auto& job : failed) Fail(job, why(*job));
}

size_t Scheduler::Queued(const std::string& model) const {
  auto s = stats_.find(model);
  return s == stats_.end() ? 0 : s->second.queued;
}

size_t Scheduler::Pending(const std::string& model) const {
  return Queued(model) + static_cast<size_t>(pool_->RunningJobs(model));
}

void Scheduler::Dispatch() {
  if (before_dispatch_) before_dispatch_();
  if (stopped_) return;
  std::set<const Job*> held;  // batches waiting to fill (this pass skips them)
  std::optional<Clock::time_point> wake;
  // Jobs in queue order, each to a free slot of a worker that serves its model.
  for (auto it = queue_.begin(); it != queue_.end();) {
    if (!held.empty() && held.count(it->get()) != 0) {
      ++it;
      continue;
    }
    bool any_free = false;
    auto slot = pool_->Pick(**it, &any_free);
    if (!any_free) break;  // every slot is busy
    if (!slot) {
      ++it;  // its model serves nowhere free yet
      continue;
    }
    auto fairest = FairestOf(it);
    if ((*fairest)->batching) {
      auto group = BatchFor(*fairest);
      if (auto until = HoldUntil(group)) {
        for (const auto& j : group) held.insert(j.get());
        wake = wake ? std::min(*wake, *until) : *until;
        ++it;
        continue;
      }
      if (group.size() > 1) {
        std::set<const Job*> members;
        for (const auto& j : group) members.insert(j.get());
        for (auto q = queue_.begin(); q != queue_.end();) {
          if (members.count(q->get()) != 0) {
            Dequeue(q);
          } else {
            ++q;
          }
        }
        it = queue_.begin();  // erased from anywhere: scan again (held ones are skipped)
        StartBatch(*slot, group);
        continue;
      }
    }
    bool first = fairest == it;
    auto job = Dequeue(fairest);
    // Erasing from the middle of a deque invalidates `it`: scan again from the front (the
    // jobs skipped before still find no slot, so this only costs time).
    if (!first) it = queue_.begin();
    else it = fairest;
    StartOne(*slot, job);
  }
  if (wake) {
    hold_timer_.expires_at(*wake);
    hold_timer_.async_wait([this](const boost::system::error_code& ec) {
      if (!ec) Dispatch();
    });
  }
}

void Scheduler::StartOne(SlotPool::Slot slot, const std::shared_ptr<Job>& job) {
  // Its wait is counted once: not again for a re-run after a crash, nor for a job queued
  // again because the worker it was sent ahead to died.
  const bool first = job->started == Clock::time_point{};
  job->started = Clock::now();
  job->expected_ms = stats_[job->model].avg_ms;
  if (first) metrics_->Waited(job->model, Seconds(job->started - job->accepted));
  if (job->batching) metrics_->Batched(job->model, 1);
  ++stats_[job->model].running_by[job->client_uid];
  pool_->Run(slot, job, [this, job](const Status& st, const MapView* reply) {
    auto& running = stats_[job->model].running_by;
    if (auto r = running.find(job->client_uid); r != running.end() && --r->second == 0) running.erase(r);
    OnReply(job, st, reply);
  });
}

void Scheduler::StartBatch(SlotPool::Slot slot, const std::vector<std::shared_ptr<Job>>& group) {
  auto peers = std::make_shared<std::vector<std::weak_ptr<Job>>>(group.begin(), group.end());
  ModelStats& stats = stats_[group.front()->model];
  for (const auto& job : group) {
    const bool first = job->started == Clock::time_point{};  // not a re-run (StartOne)
    job->started = Clock::now();
    if (first) metrics_->Waited(job->model, Seconds(job->started - job->accepted));
    job->batch_peers = peers;
    job->grace_over = false;
    ++stats.running_by[job->client_uid];
  }
  ++stats.batches.batches;
  stats.batches.batched_jobs += group.size();
  metrics_->Batched(group.front()->model, group.size());
  pool_->RunBatch(slot, group, [this](const std::shared_ptr<Job>& job, const Status& st, const MapView* reply) {
    auto& running = stats_[job->model].running_by;
    if (auto r = running.find(job->client_uid); r != running.end() && --r->second == 0) running.erase(r);
    job->batch_peers.reset();  // a re-run after a crash starts afresh
    OnReply(job, st, reply);
  });
}

std::vector<std::shared_ptr<Job>> Scheduler::BatchFor(const std::shared_ptr<Job>& lead) const {
  std::vector<std::shared_ptr<Job>> group = {lead};
  const size_t max = lead->batching->max_batch;
  for (auto q = queue_.begin(); q != queue_.end() && group.size() < max; ++q) {
    if (*q != lead && BatchCompatible(*lead, **q)) group.push_back(*q);
  }
  return group;
}

std::optional<Scheduler::Clock::time_point> Scheduler::HoldUntil(const std::vector<std::shared_ptr<Job>>& group) const {
  const BatchPolicy& p = *group.front()->batching;
  const size_t n = group.size();
  if (n >= p.max_batch || p.max_delay_us == 0 ||
      std::find(p.preferred_batch_sizes.begin(), p.preferred_batch_sizes.end(), n) != p.preferred_batch_sizes.end()) {
    return std::nullopt;
  }
  auto oldest = group.front()->accepted;
  for (const auto& j : group) oldest = std::min(oldest, j->accepted);
  auto until = oldest + std::chrono::microseconds(p.max_delay_us);
  if (until <= Clock::now()) return std::nullopt;
  for (const auto& j : group) {
    if (j->deadline_at && *j->deadline_at <= until) return std::nullopt;  // it would pass waiting
  }
  return until;
}

BatchCounts Scheduler::Batches(const std::string& model) const {
  auto s = stats_.find(model);
  return s == stats_.end() ? BatchCounts{} : s->second.batches;
}

bool Scheduler::BatchOverdue(const Job& job) const {
  if (!job.batch_peers) return true;
  for (const auto& weak : *job.batch_peers) {
    auto peer = weak.lock();
    if (peer && !peer->grace_over && pool_->IsRunning(*peer)) return false;
  }
  return true;
}

void Scheduler::OnReply(const std::shared_ptr<Job>& job, const Status& st, const MapView* reply) {
  if (!st.ok()) {
    if (job->ahead && st.code() == Code::kWorkerCrashed && !job->answered && !stopped_) {
      // Sent ahead, it never started: queued again, first, as if never dispatched.
      job->ahead = false;
      spdlog::info("job {} of model '{}' was sent ahead to a worker that died first; queued again", job->id,
                   job->model);
      Enqueue(job, true);
      Dispatch();
      return;
    }
    // The worker died under it. Re-run it only if the client asked for that, and never a
    // job that has now crashed two workers.
    if (!job->answered && ++job->crashes < 2 && job->retries > 0 && !stopped_) {
      --job->retries;
      spdlog::warn("job {} of model '{}' crashed its worker; re-running it once as the client asked", job->id,
                   job->model);
      Enqueue(job, true);
    } else {
      Fail(job, job->crashes >= 2 ? Status(st.code(), st.message() + " (it crashed a worker before too)") : st);
    }
    Dispatch();
    return;
  }
  ModelStats& stats = stats_[job->model];
  double ms = std::chrono::duration<double, std::milli>(Clock::now() - job->started).count();
  metrics_->Ran(job->model, ms / 1000);
  stats.avg_ms = stats.avg_ms == 0 ? ms : 0.9 * stats.avg_ms + 0.1 * ms;

  auto ok = reply->Bool("ok");
  std::vector<WorkerBlock> blocks;
  const msgpack::object* outputs = ok.ok() && *ok ? reply->Find("outputs") : nullptr;
  Status check = Status::Ok();
  Writer tree;  // the outputs as the client names its arenas
  if (outputs != nullptr) {
    check = CheckOutputTree(
        *outputs,
        [&](uint64_t arena, OutputArenaRef* ref) {
          if (IsWorkerArena(arena)) {  // an output arena this worker made for this client
            const ArenaEntry* a = arenas_->FindWorkerArena(job->worker, job->generation, arena);
            if (a == nullptr || a->owner != job->client_id) return false;
            *ref = {a->id, a->size, true};
            return true;
          }
          const ArenaEntry* a = arenas_->FindOwned(arena, job->client_id);  // an input returned in place
          if (a == nullptr) return false;
          *ref = {a->id, a->size, false};
          return true;
        },
        &tree, &blocks, job->worker_gpu);
  }
  bool delivered = !job->answered && ok.ok() && *ok && outputs != nullptr && check.ok();
  if (!delivered && !blocks.empty()) ReleaseBlocks(*job, blocks);  // nobody will read these outputs
  if (!ok.ok() || !*ok) {
    std::string tb;
    Status err = StatusFromReply(*reply, &tb);
    Fail(job, err, tb);
  } else if (outputs == nullptr) {
    Fail(job, Status::Internal("worker reply without outputs for job " + std::to_string(job->id)));
  } else if (!check.ok()) {
    Fail(job, Status::Internal("job " + std::to_string(job->id) + " of model '" + job->model + "': " + check.message()));
  } else if (!job->answered) {
    // Output arenas the client has not seen yet travel with the answer, once each.
    std::vector<const ArenaEntry*> fresh;
    std::vector<std::shared_ptr<OwnedFd>> fds;
    for (const auto& b : blocks) {
      ArenaEntry* a = arenas_->FindWorkerArena(job->worker, job->generation, b.arena);
      if (a == nullptr || a->delivered || fds.size() >= kMaxFdsPerFrame) continue;
      a->delivered = true;
      fds.push_back(std::move(a->fd));  // shoald needs it no more
      fresh.push_back(a);
    }
    Writer r;
    BeginReply(&r, job->request_id, fresh.empty() ? 2 : 3);
    r.Key("job"); r.Val(job->id);
    r.Key("outputs");
    auto body = tree.body();
    r.pk().pack_bin_body(body.data(), static_cast<uint32_t>(body.size()));  // already MessagePack
    if (!fresh.empty()) {
      r.Key("new_arenas");
      r.pk().pack_array(static_cast<uint32_t>(fresh.size()));
      for (const ArenaEntry* a : fresh) {
        r.Map(a->gpu.empty() ? 2 : 3);
        r.Key("arena"); r.Val(a->id);
        r.Key("size"); r.Val(static_cast<uint64_t>(a->size));
        if (!a->gpu.empty()) {
          r.Key("gpu"); r.Str(a->gpu);
        }
      }
    }
    Answer(job, r.body(), std::move(fds));
    ++jobs_done_;
    metrics_->Answered(job->model, Code::kOk);
  }
  Dispatch();
}

void Scheduler::ReleaseBlocks(const Job& job, const std::vector<WorkerBlock>& blocks) {
  std::map<uint64_t, std::vector<uint64_t>> by_arena;
  for (const auto& b : blocks) by_arena[b.arena].push_back(b.block);
  for (const auto& [arena, offsets] : by_arena) pool_->FreeBlocks(job, arena, offsets);
}

void Scheduler::Answer(const std::shared_ptr<Job>& job, std::string_view body,
                       std::vector<std::shared_ptr<OwnedFd>> fds) {
  if (job->answered) return;
  job->answered = true;
  deadlines_.Remove(job.get());
  if (auto s = job->client.lock(); s && !s->closed) s->channel->Send(body, std::move(fds));
}

void Scheduler::Fail(const std::shared_ptr<Job>& job, const Status& st, std::string_view traceback) {
  if (job->answered) return;
  ++jobs_failed_;
  metrics_->Answered(job->model, st.code());
  Answer(job, ErrorReply(job->request_id, st, traceback));
}

void Scheduler::OnDeadline(const std::shared_ptr<Job>& job) {
  if (job->answered) return;
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - job->accepted).count();
  std::string what = "job " + std::to_string(job->id) + " of model '" + job->model + "'";
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (*it == job) {
      Dequeue(it);
      return Fail(job, Status(Code::kTimeout, what + " waited " + std::to_string(waited) +
                                                  " ms in the queue and passed its deadline"));
    }
  }
  if (job->ahead) {
    // Its worker skips it (the job carries its deadline). Should it have started just
    // before, shoald learns so with the reply before it, well within the grace below.
    Fail(job, Status(Code::kTimeout, what + " waited " + std::to_string(waited) +
                                         " ms, the last of it queued in worker " + std::to_string(job->worker) +
                                         " behind another job, and passed its deadline; it will not run"));
  } else {
    Fail(job, Status(Code::kTimeout, what + " passed its deadline after " + std::to_string(waited) +
                                         " ms while running; its worker is given " +
                                         std::to_string(config_.kill_grace_ms) + " ms before it is killed"));
    if (!pool_->IsRunning(*job)) return;
  }
  // The grace period is the job's own (a timer of its own): with K interpreters
  // several jobs of one worker may be past their deadlines, and each must still get its
  // worker killed if it never returns.
  job->grace = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(config_.kill_grace_ms));
  // In a batch, the run is the members': it is killed only once every member still
  // running has passed its own deadline and grace.
  job->grace->async_wait([this, job](const boost::system::error_code& ec) {
    if (ec || !pool_->IsRunning(*job)) return;
    job->grace_over = true;
    if (!BatchOverdue(*job)) return;
    pool_->Terminate(*job, "still runs timed-out job " + std::to_string(job->id) +
                               (job->batch_peers ? " (a batch of " + std::to_string(job->batch_peers->size()) +
                                                       " jobs, all past their deadlines)"
                                                 : std::string()));
  });
}

}  // namespace shoal
