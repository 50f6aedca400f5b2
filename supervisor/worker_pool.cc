#include "supervisor/worker_pool.h"

#include "supervisor/gpu_usage.h"

#include <linux/magic.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "protocol/channel.h"
#include "shm/output_arenas.h"
#include "base/subprocess.h"

namespace shoal {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

WorkerPool::WorkerPool(asio::io_context& io, const SupervisorConfig& config, ArenaTable* arenas,
                       PoolListener* listener)
    : io_(io),
      config_(config),
      arenas_(arenas),
      listener_(listener),
      zygote_(io),
      memory_(std::chrono::milliseconds(1000), [this, alive = alive_](pid_t pid, const std::string& why) {
        asio::post(io_, [this, alive, pid, why] {
          if (*alive) OnOverLimit(pid, why);
        });
      }) {}

WorkerPool::~WorkerPool() {
  *alive_ = false;
  // The loop has stopped: waiting here blocks nobody.
  for (auto& [slot, w] : workers_) {
    if (w->pid > 0 && !w->gone) kill(w->pid, SIGKILL);
  }
  for (auto& [slot, w] : workers_) {
    if (w->pid > 0) waitpid(w->pid, nullptr, 0);
  }
  pid_t z = zygote_.pid();
  zygote_.Kill();
  if (z > 0) waitpid(z, nullptr, 0);
  if (!new_copies_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(new_copies_, ec);
  }
}

WorkerHandle* WorkerPool::Find(int slot, uint64_t generation) const {
  auto it = workers_.find(slot);
  if (it == workers_.end() || it->second->generation != generation || it->second->gone) return nullptr;
  return it->second.get();
}

std::vector<std::string> WorkerPool::WorkerArgs() const {
  std::vector<std::string> args;
  if (config_.interpreters > 1) {
    args = {"--interpreters", std::to_string(config_.interpreters), "--interpreter-cache", config_.interpreter_cache};
  }
  for (auto& a : WorkerSandbox(config_, tmp_.root()).ToArgs()) args.push_back(a);
  if (user_) {  // switched to right after the fork, before any model code (worker/sandbox.cc)
    args.push_back("--run-as");
    args.push_back(std::to_string(user_->uid) + ":" + std::to_string(user_->gid));
  }
  if (!new_copies_.empty()) {
    args.push_back("--new-copies");
    args.push_back(new_copies_);
  }
  return args;
}

void WorkerPool::Start(std::optional<WorkerUser> user) {
  // First: in cgroup v2 this may move shoald into a leaf cgroup, where the zygote follows it.
  limits_ = std::make_unique<WorkerMemory>(config_.worker_memory_cgroup);
  user_ = std::move(user);
  if (auto st = tmp_.Create(); !st.ok()) spdlog::error("{}: model code will have no folder to write", st.message());
  // Workers running as their own user make their folders in it (worker/filesystem_view.h).
  if (user_ && !tmp_.root().empty() && chown(tmp_.root().c_str(), user_->uid, user_->gid) != 0) {
    spdlog::error("cannot give {} to the workers' user: {}", tmp_.root(), std::strerror(errno));
  }
  if (user_ && config_.interpreters > 1) {
    // The interpreter cache is root's (the zygote loads from it): a worker running as its
    // own user makes the copies it still needs in a folder of that user's instead.
    std::error_code ec;
    std::string dir = (std::filesystem::temp_directory_path(ec) / "shoal-worker-copies-XXXXXX").string();
    if (mkdtemp(dir.data()) != nullptr && chown(dir.c_str(), user_->uid, user_->gid) == 0) {
      new_copies_ = dir;
    } else {
      spdlog::error("cannot make a folder for the workers' library copies ({}): {}; an extension module a "
                    "model imports that the zygote did not will fail to import", dir, std::strerror(errno));
    }
  }
  if (auto st = gpus_.Discover(config_.worker_binary, config_.gpus); !st.ok()) {
    spdlog::error("{}; workers run without GPUs", st.ToString());
  }
  if (gpus_.count() > 0) {
    // NVML (status's GPU memory) opens the driver's devices once: now, with its
    // descriptors close-on-exec, rather than in the middle of serving.
    if (auto m = GpuMemoryOf(gpus_.BusOf(0)); !m.ok()) spdlog::info("{}; status shows no GPU memory figures", m.status().message());
  }
  if (config_.zygote) {
    std::vector<std::string> args = {"--zygote", "--supervisor", std::to_string(getpid())};
    for (auto& a : WorkerArgs()) args.push_back(a);
    zygote_.Start(config_.worker_binary, args);
  }
  for (int slot = 0; slot < config_.workers; ++slot) Spawn(slot);
}

void WorkerPool::Spawn(int slot) {
  auto w = std::make_unique<WorkerHandle>();
  w->slot = slot;
  w->jobs.resize(static_cast<size_t>(config_.interpreters));
  w->ahead.resize(static_cast<size_t>(config_.interpreters));
  w->last_model.resize(static_cast<size_t>(config_.interpreters));
  w->started = Clock::now();
  w->generation = next_generation_++;
  uint64_t gen = w->generation;
  int sock = -1;
  if (zygote_.alive()) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      spdlog::error("socketpair for worker {}: {}", slot, std::strerror(errno));
      return ScheduleRespawn(slot, std::chrono::milliseconds(1000));
    }
    sock = sv[0];
    zygote_.Fork(
        slot, sv[1], gpus_.CudaVisible(slot),
        [this, slot, gen](pid_t pid) {
      WorkerHandle* w = Find(slot, gen);
      if (w == nullptr) {
        if (pid > 0) kill(pid, SIGKILL);  // its slot moved on; the reaper collects it
        return;
      }
      if (pid <= 0) return OnGone(w, "no process (the zygote could not fork it)");
      w->pid = pid;
      if (auto e = early_exits_.find(pid); e != early_exits_.end()) {
        int status = e->second;
        early_exits_.erase(e);
        return OnGone(w, DescribeWaitStatus(status));
      }
      WatchMemory(w);
      if (w->memory_file) memory_.ReadFrom(pid, dup(w->memory_file->get()));
      for (auto& [rid, load] : w->load_deadlines) ArmLoadDeadline(w, rid);
      spdlog::info("worker {} forked by the zygote (pid {}) in {:.1f} ms", slot, pid,
                   std::chrono::duration<double, std::milli>(Clock::now() - w->started).count());
        },
        LimitMemory(w.get()));
  } else {
    std::vector<std::string> args = {"--slot", std::to_string(slot)};
    if (auto v = gpus_.CudaVisible(slot)) {
      args.push_back("--cuda-visible");
      args.push_back(*v);
    }
    for (auto& a : WorkerArgs()) args.push_back(a);
    auto cgroup_procs = LimitMemory(w.get());
    auto proc = SpawnWorkerProcess(config_.worker_binary, args);
    if (!proc.ok()) {
      spdlog::error("cannot start worker {}: {}", slot, proc.status().ToString());
      ForgetMemory(w.get());
      return ScheduleRespawn(slot, std::chrono::milliseconds(1000));
    }
    w->pid = proc->pid;
    // Into its memory cgroup before shoald sends it anything (it runs model code only for
    // shoald's loads).
    if (cgroup_procs) (void)!write(cgroup_procs->get(), std::to_string(w->pid).c_str(), std::to_string(w->pid).size());
    WatchMemory(w.get());
    sock = proc->sock;
    spdlog::info("started worker {} (pid {})", slot, w->pid);
  }
  w->channel = std::make_shared<AsyncChannel>(io_, sock);
  WorkerHandle* raw = w.get();
  workers_[slot] = std::move(w);
  raw->channel->Start(
      [this, slot, gen](std::string body, std::vector<int>* fds) {
        if (WorkerHandle* w = Find(slot, gen)) {
          OnFrame(w, body, fds);  // takes the fds of the output arenas a reply announces
        } else {
          CloseAll(fds);
        }
      },
      [this, slot, gen](const Status& why) {
        WorkerHandle* w = Find(slot, gen);
        if (w == nullptr) return;
        if (why.code() != Code::kUnavailable) spdlog::warn("{}: {}", w->Describe(), why.ToString());
        if (w->pid <= 0) {
          // Posted: this may run inside a Send of a caller that still uses `w`, and OnGone
          // may replace the handle at once.
          return asio::post(io_, [this, slot, gen] {
            if (WorkerHandle* w = Find(slot, gen)) OnGone(w, "exit before it was started (the zygote died)");
          });
        }
        // EOF: the process is exiting or exited. Make sure, and let the reaper say how it
        // died; if it is not ours to reap, give up waiting after a while.
        kill(w->pid, SIGKILL);
        w->kill_timer = std::make_unique<asio::steady_timer>(io_, std::chrono::seconds(2));
        w->kill_timer->async_wait([this, slot, gen](const boost::system::error_code& ec) {
          if (WorkerHandle* w = Find(slot, gen); !ec && w != nullptr) OnGone(w, "closed its socket");
        });
      });
  listener_->OnWorkerSpawned({slot, gen});
}

void WorkerPool::MarkStarted(Worker worker) {
  WorkerHandle* w = Find(worker.slot, worker.generation);
  if (w == nullptr) return;
  w->ready = true;
  spdlog::info("{} serves {} models, {:.1f} ms after it was asked for", w->Describe(), w->ready_models.size(),
               std::chrono::duration<double, std::milli>(Clock::now() - w->started).count());
}

void WorkerPool::ScheduleRespawn(int slot, std::chrono::milliseconds delay) {
  if (stopping_) return;
  if (delay.count() == 0) return Spawn(slot);
  auto t = std::make_shared<asio::steady_timer>(io_, delay);
  t->async_wait([this, slot, t](const boost::system::error_code& ec) {
    // Only if the slot is still empty (a resize may have filled it meanwhile) and wanted.
    auto it = workers_.find(slot);
    if (!ec && !stopping_ && slot < config_.workers && (it == workers_.end() || it->second->gone)) Spawn(slot);
  });
}

void WorkerPool::Reap() {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) {
      if (limits_) limits_->RemoveLeftovers();  // cgroups of workers whose processes were still exiting
      return;
    }
    memory_.Untrack(pid);
    if (pid == zygote_.pid()) {
      zygote_.OnExited(DescribeWaitStatus(status));
      continue;
    }
    if (other_children_ && other_children_(pid, status)) continue;
    WorkerHandle* found = nullptr;
    bool unforked = false;  // a worker still waiting for the zygote to name its pid
    for (auto& [slot, w] : workers_) {
      if (w->pid == pid && !w->gone) found = w.get();
      unforked = unforked || (w->pid <= 0 && !w->gone);
    }
    if (found != nullptr) {
      OnGone(found, DescribeWaitStatus(status));
    } else if (unforked && early_exits_.size() < 64) {
      early_exits_[pid] = status;
    }
    tmp_.Remove(pid);  // a worker's, after OnGone killed what its model code started
  }
}

void WorkerPool::Send(WorkerHandle* w, uint64_t id, std::string_view body, ReplyFn fn,
                      std::vector<std::shared_ptr<OwnedFd>> fds) {
  w->pending[id] = std::move(fn);
  w->channel->Send(body, std::move(fds));
}

void WorkerPool::TakeMemoryFile(WorkerHandle* w, std::vector<int>* fds) {
  if (fds->empty()) return;
  OwnedFd f(fds->front());
  fds->erase(fds->begin());
  // The first one only, sent before any model code ran; and only a /proc file (the
  // sampler thread reads it: nothing that could block it).
  struct statfs fs;
  if (w->memory_file || fstatfs(f.get(), &fs) != 0 || fs.f_type != PROC_SUPER_MAGIC) return;
  w->memory_file = std::make_shared<OwnedFd>(f.release());
  if (w->pid > 0) memory_.ReadFrom(w->pid, dup(w->memory_file->get()));
}

void WorkerPool::OnFrame(WorkerHandle* w, const std::string& body, std::vector<int>* fds) {
  auto oh = Decode(body);
  if (!oh.ok()) {
    spdlog::error("{} sent an undecodable message: {}", w->Describe(), oh.status().ToString());
    if (w->pid > 0) kill(w->pid, SIGKILL);
    return;
  }
  MapView m(oh->get());
  // What an owner's output arenas hold: with each job's reply, and as a notice after a
  // release or a client's drop.
  if (auto u = m.Find("usage"); u != nullptr && u->type == msgpack::type::MAP) {
    MapView usage(*u);
    w->output_usage[usage.Uint("owner").value_or(0)] = {usage.Uint("bytes").value_or(0),
                                                        usage.Uint("arenas").value_or(0)};
  }
  auto id = m.Uint("id");
  if (!id.ok()) {
    if (m.Str("op").value_or("") == "memory_file") return TakeMemoryFile(w, fds);
    if (m.Str("op").value_or("") == "usage") return;
    spdlog::error("{} sent a message without id", w->Describe());
    return;
  }
  auto it = w->pending.find(*id);
  if (it == w->pending.end()) {
    spdlog::warn("{} answered unknown request {}", w->Describe(), *id);
    return;
  }
  if (auto bytes = m.OptUint("gpu_weights"); bytes.ok() && bytes->has_value() && !fds->empty()) {
    // A load that uploaded a model's GPU weights: the allocation comes first.
    w->uploaded_weights[*id] = std::make_shared<OwnedFd>(fds->front());
    fds->erase(fds->begin());
  }
  RegisterOutputArenas(w, *id, m, fds);
  auto fn = std::move(it->second);
  w->pending.erase(it);
  w->pending_model.erase(*id);
  bool poisoned = m.Bool("poisoned").value_or(false);
  pid_t pid = w->pid;
  if (poisoned) {
    w->retiring = true;  // no new job may land on it while the answer goes out
    CrashCharge charge{w->pending_model.count(*id) ? w->pending_model.at(*id) : std::string(), std::nullopt};
    if (auto j = w->JobOf(*id)) charge.client = j->client_uid;
    if (!charge.model.empty()) w->poisoned_by = charge;  // blame as for a crash (OnGone)
  }
  fn(Status::Ok(), &m);
  w->uploaded_weights.erase(*id);  // not a load's (a worker's mistake): dropped
  if (poisoned) {
    // A sticky CUDA error: the job has its answer; the worker's context is unusable, so the
    // worker is replaced (the reaper and its EOF do the rest, as for a crash).
    spdlog::warn("worker {} (pid {}): CUDA error in request {}; replacing the worker", w->slot, pid, *id);
    if (pid > 0) kill(pid, SIGKILL);
    return;
  }
  RetireIfDone(w);
}

void WorkerPool::OnGone(WorkerHandle* w, std::string how) {
  if (w->gone) return;
  w->gone = true;
  w->channel->Close();
  if (w->kill_timer) w->kill_timer->cancel();
  if (w->pid > 0) {
    memory_.Untrack(w->pid);
    // Whatever model code started dies with the worker: the sandbox put the worker in a
    // process group of its own (pgid = its pid) that nothing in it may leave.
    kill(-w->pid, SIGKILL);
  }
  ForgetMemory(w);
  std::string memory_hint;
  if (!w->memory_exceeded.empty()) {  // killed for its memory: that is how it died
    how = "exceeding its memory limit (" + w->memory_exceeded + ")";
    memory_hint = "; raise worker_memory_mb if the model needs more, or send it smaller inputs";
  }
  // Which interpreter crashed is not known from outside: every job or load in flight on
  // the worker is charged (with K = 1, the one that crashed it), a job to its requester.
  // A worker shoald killed for a job's deadline is charged to nobody.
  std::set<std::pair<std::string, std::optional<uid_t>>> charged;
  for (const auto& [rid, model] : w->pending_model) {
    if (FindJob(w->ahead, rid)) continue;  // sent ahead, not started: it crashed nothing
    std::optional<uid_t> client;
    if (auto j = w->JobOf(rid)) client = j->client_uid;  // in a batch: each member's client
    if (!w->killed_for_deadline) charged.insert({model, client});
  }
  if (w->poisoned_by) charged.insert({w->poisoned_by->model, w->poisoned_by->client});
  std::vector<CrashCharge> charges;
  for (const auto& [model, client] : charged) charges.push_back({model, client});
  w->pending_model.clear();
  ++restarts_;
  std::string job_part;
  for (const auto& j : w->jobs) {
    if (j) job_part += (job_part.empty() ? " while running job " : ", job ") + std::to_string(j->id) + " of model '" + j->model + "'";
    if (j && !j->batch.empty()) job_part += " (a batch of " + std::to_string(j->batch.size() + 1) + " jobs)";
  }
  spdlog::error("{} died: {}{}", w->Describe(), how, job_part);
  // Answer everything it owed, in request order; the callbacks may touch the pool.
  auto pending = std::move(w->pending);
  w->pending.clear();
  auto jobs = std::move(w->jobs);
  w->jobs.assign(jobs.size(), nullptr);
  auto ahead = std::move(w->ahead);
  w->ahead.assign(jobs.size(), nullptr);
  w->ready_models.clear();
  w->arenas.clear();
  w->arena_lru.clear();
  w->arena_bytes = w->gpu_arena_bytes = 0;
  w->output_usage.clear();
  arenas_->DropWorker(w->slot, w->generation);  // clients keep the mappings they hold
  std::string who = "worker " + std::to_string(w->slot) + " (pid " + std::to_string(w->pid) + ")";
  for (auto& [rid, fn] : pending) {
    if (auto waiting = FindJob(ahead, rid)) {  // the scheduler queues it again (Job::ahead)
      fn(Status(Code::kWorkerCrashed, who + " died from " + how + " before starting job " + std::to_string(rid) +
                                          " of model '" + waiting->model + "', sent to it ahead of its turn"),
         nullptr);
      continue;
    }
    std::shared_ptr<Job> job = FindJob(jobs, rid);
    std::string what =
        !job ? who + " died from " + how + " before answering"
             : who + " died from " + how + " while running job " + std::to_string(rid) + " of model '" + job->model +
                   "'" + (job->batch_peers ? " in a batch of " + std::to_string(job->batch_peers->size()) + " jobs" : "") +
                   (jobs.size() > 1 ? " on interpreter " + std::to_string(job->interp) + " of " +
                                          std::to_string(jobs.size()) + " (any of them may have crashed it)"
                                    : std::string()) +
                   "; the worker is being replaced and the job was not retried" + memory_hint;
    fn(Status(Code::kWorkerCrashed, what), nullptr);
  }
  int slot = w->slot;
  bool was_ready = w->ready;
  listener_->OnWorkerDied(charges, how);
  if (stopping_ || slot >= config_.workers) return;  // shutting down, or the pool shrank
  // A worker that dies while starting (loading its models) is replaced with capped
  // exponential backoff; one that dies running a job is replaced at once (a model whose
  // jobs keep crashing workers is cut off by the registry instead).
  int streak = !was_ready ? ++crash_streak_[slot] : (crash_streak_[slot] = 0);
  auto delay = std::chrono::milliseconds(streak <= 1 ? 0 : std::min(100 << std::min(streak - 2, 6), 5000));
  ScheduleRespawn(slot, delay);
}

void WorkerPool::TerminateWorker(WorkerHandle* w, const std::string& why) {
  if (w->gone || w->pid <= 0) return;
  spdlog::warn("{} {}: SIGTERM, then SIGKILL after 500 ms", w->Describe(), why);
  w->retiring = true;  // it takes no new jobs meanwhile
  kill(w->pid, SIGTERM);
  w->kill_timer = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(500));
  pid_t pid = w->pid;
  int slot = w->slot;
  uint64_t gen = w->generation;
  w->kill_timer->async_wait([this, pid, slot, gen](const boost::system::error_code& ec) {
    if (!ec && Find(slot, gen) != nullptr) kill(pid, SIGKILL);
  });
}

void WorkerPool::RetireIfDone(WorkerHandle* w) {
  if (!w->retiring || w->gone || w->Running() > 0 || !w->pending.empty()) return;
  int slot = w->slot;
  spdlog::info("{} retired", w->Describe());
  w->gone = true;
  ForgetMemory(w);
  arenas_->DropWorker(w->slot, w->generation);
  w->channel->Close();  // the worker exits on EOF; the reaper collects it
  if (w->killed_for_deadline && w->pid > 0) kill(w->pid, SIGKILL);  // its kill timer goes with it
  if (w->pid > 0) kill(-w->pid, SIGKILL);  // what model code started does not outlive it
  workers_.erase(slot);
  if (slot < config_.workers && !stopping_) Spawn(slot);
  listener_->OnSlotsChanged();
}

void WorkerPool::Resize(bool sandbox_changed) {
  if (sandbox_changed && zygote_.alive()) {
    zygote_.Kill();
    std::vector<std::string> args = {"--zygote", "--supervisor", std::to_string(getpid())};
    for (auto& a : WorkerArgs()) args.push_back(a);
    zygote_.Start(config_.worker_binary, args);
  }
  std::vector<int> retire;
  for (auto& [slot, w] : workers_) {
    if (slot >= config_.workers && !w->gone) retire.push_back(slot);
  }
  for (int slot : retire) {
    auto it = workers_.find(slot);
    if (it == workers_.end()) continue;
    it->second->retiring = true;
    RetireIfDone(it->second.get());
  }
  for (auto it = workers_.begin(); it != workers_.end();) {  // crashed slots beyond the new size
    it = it->first >= config_.workers && it->second->gone ? workers_.erase(it) : std::next(it);
  }
  for (int slot = 0; slot < config_.workers; ++slot) {
    if (workers_.count(slot) == 0) Spawn(slot);
  }
}

void WorkerPool::Stop() {
  stopping_ = true;
  zygote_.set_stopping();
}

void WorkerPool::KillAll() {
  Stop();
  for (auto& [slot, w] : workers_) {
    if (w->gone) continue;
    // Requests still in flight are answered too: nobody is left waiting.
    auto pending = std::move(w->pending);
    w->pending.clear();
    auto jobs = std::move(w->jobs);
    w->jobs.assign(jobs.size(), nullptr);
    auto ahead = std::move(w->ahead);
    w->ahead.assign(jobs.size(), nullptr);
    for (auto& [rid, fn] : pending) {
      std::string what = "shoald stopped before " + w->Describe() + " answered";
      if (auto j = FindJob(ahead, rid)) {
        what = "shoald stopped before job " + std::to_string(rid) + " of model '" + j->model + "' started";
      } else if (auto j = FindJob(jobs, rid)) what = "shoald stopped before job " + std::to_string(rid) + " of model '" + j->model + "' finished";
      fn(Status(Code::kUnavailable, what), nullptr);
    }
    w->gone = true;
    if (w->pid > 0) {
      kill(w->pid, SIGKILL);
      kill(-w->pid, SIGKILL);  // and what model code started
    }
    ForgetMemory(w.get());
    w->channel->Close();
  }
  zygote_.Kill();
}

std::shared_ptr<OwnedFd> WorkerPool::LimitMemory(WorkerHandle* w) {
  w->memory_limit = limits_ ? limits_->LimitFor(config_) : 0;
  if (w->memory_limit == 0) return nullptr;
  w->memory_by = "sampler";
  if (limits_->cgroup_kind().empty()) return nullptr;
  auto g = limits_->Create("worker-" + std::to_string(w->slot) + "-" + std::to_string(w->generation), w->memory_limit);
  if (!g.ok()) {
    spdlog::warn("worker {}: no memory cgroup ({}); shoald's sampler enforces its limit", w->slot,
                 g.status().message());
    return nullptr;
  }
  w->cgroup = std::move(*g);
  w->memory_by = limits_->cgroup_kind();
  return w->cgroup.procs;
}

void WorkerPool::WatchMemory(WorkerHandle* w) {
  MemoryWatch watch;
  if (!w->cgroup.name.empty()) {
    w->cgroup.procs.reset();
    if (limits_->Holds(w->cgroup.name, w->pid)) {
      watch.limit_file = w->cgroup.limit_file;
      watch.limit_text = w->cgroup.limit_text;
    } else {
      spdlog::warn("{} did not join its memory cgroup {}; shoald's sampler enforces its limit", w->Describe(),
                   w->cgroup.name);
      limits_->Remove(w->cgroup.name);
      w->cgroup = {};
      w->memory_by = "sampler";
    }
  }
  if (w->memory_by == "sampler") watch.limit_bytes = w->memory_limit;
  memory_.Track(w->pid, watch);
}

void WorkerPool::OnOverLimit(pid_t pid, const std::string& why) {
  for (auto& [slot, w] : workers_) {
    if (w->pid != pid || w->gone) continue;
    spdlog::error("{}: {}", w->Describe(), why);
    w->memory_exceeded = why;
    kill(pid, SIGKILL);
    kill(-pid, SIGKILL);  // and what model code started; the reaper answers its jobs
  }
}

void WorkerPool::ForgetMemory(WorkerHandle* w) {
  if (w->cgroup.name.empty() || !limits_) return;
  if (w->memory_exceeded.empty() && limits_->OomKills(w->cgroup.name) > 0) {
    w->memory_exceeded = "its memory cgroup reached worker_memory_mb = " + std::to_string(w->memory_limit >> 20) +
                         " MiB; enforced by " + w->memory_by + ", the kernel killed it";
  }
  limits_->Remove(w->cgroup.name);
  w->cgroup = {};
}

namespace {

// Forgets client arena `arena` in `w` and tells the worker to close it.
void DropFromWorker(WorkerHandle* w, uint64_t arena) {
  auto it = w->arenas.find(arena);
  if (it == w->arenas.end()) return;
  (it->second.gpu ? w->gpu_arena_bytes : w->arena_bytes) -= it->second.bytes;
  w->arena_lru.erase(it->second.lru);
  w->arenas.erase(it);
  Writer m;
  BeginNotice(&m, "drop_arena", 1);
  m.Key("arena"); m.Val(arena);
  w->channel->Send(m.body());
}

}  // namespace

void WorkerPool::DropArena(uint64_t arena) {
  for (auto& [slot, w] : workers_) {
    if (!w->gone) DropFromWorker(w.get(), arena);
  }
}

void WorkerPool::DropClient(uint64_t client) {
  for (auto& [slot, w] : workers_) {
    if (w->gone) continue;
    Writer m;
    BeginNotice(&m, "drop_client", 1);
    m.Key("client"); m.Val(client);
    w->channel->Send(m.body());
  }
}

void WorkerPool::Release(int slot, uint64_t generation, uint64_t local, const std::vector<uint64_t>& blocks) {
  if (WorkerHandle* w = Find(slot, generation)) SendRelease(w, local, blocks);
}

void WorkerPool::SendRelease(WorkerHandle* w, uint64_t local, const std::vector<uint64_t>& blocks) {
  Writer f;
  BeginNotice(&f, "release", 2);
  f.Key("arena"); f.Val(local);
  f.Key("blocks"); f.Val(blocks);
  w->channel->Send(f.body());
}

void WorkerPool::RegisterOutputArenas(WorkerHandle* w, uint64_t rid, const MapView& reply, std::vector<int>* fds) {
  const msgpack::object* list = reply.Find("new_arenas");
  if (list == nullptr) return;
  std::shared_ptr<Job> job = w->JobOf(rid);
  uint32_t n = list->type == msgpack::type::ARRAY ? list->via.array.size : 0;
  bool client_gone = job == nullptr || job->client.expired() || job->client.lock()->closed;
  auto drop_client = [&] {  // the worker forgets those arenas and makes new ones next time
    Writer m;
    BeginNotice(&m, "drop_client", 1);
    m.Key("client"); m.Val(job->client_id);
    w->channel->Send(m.body());
  };
  if (n > kMaxFdsPerFrame || n > fds->size() || job == nullptr) {
    spdlog::error("{} announced {} output arenas with {} fds for request {}; the job's outputs are refused",
                  w->Describe(), n, fds->size(), rid);
    CloseAll(fds);
    if (job != nullptr) drop_client();
    return;
  }
  for (uint32_t i = 0; i < n; ++i) {
    auto fd = std::make_shared<OwnedFd>(fds->front());
    fds->erase(fds->begin());
    auto entry = MapView::Of(list->via.array.ptr[i], "new arena");
    auto local = entry.ok() ? entry->Uint("arena") : Result<uint64_t>(entry.status());
    if (!local.ok() || !IsWorkerArena(*local) || client_gone) continue;  // fd closed here
    std::string gpu = entry->OptStr("gpu").value_or(std::nullopt).value_or("");
    uint64_t size = entry->Uint("size").value_or(0);
    if (auto st = arenas_->RegisterWorkerArena(job->client_id, w->slot, w->generation, *local, fd, gpu, size);
        !st.ok()) {
      spdlog::error("{}: output arena for job {}: {}", w->Describe(), rid, st.status().ToString());
    }
  }
  if (client_gone) drop_client();  // made after the client left: the worker drops it again
}

void WorkerPool::SendArenaIfNeeded(WorkerHandle* w, uint64_t arena) {
  if (auto it = w->arenas.find(arena); it != w->arenas.end()) {  // most recently used now
    w->arena_lru.splice(w->arena_lru.begin(), w->arena_lru, it->second.lru);
    return;
  }
  const ArenaEntry* a = arenas_->Find(arena);
  if (a == nullptr) return;
  // Arenas a running job of this worker reads stay; the idle ones go, oldest first.
  std::set<uint64_t> busy;
  for (const auto* placed : {&w->jobs, &w->ahead}) {  // running, and sent ahead
    for (const auto& j : *placed) {
      if (!j) continue;
      for (const auto& d : j->inputs) busy.insert(d.arena);
      for (const auto& m : j->batch) {
        for (const auto& d : m->inputs) busy.insert(d.arena);
      }
    }
  }
  // Host and GPU arenas each have worker_arena_mb: dropping one kind frees none of the other.
  const bool gpu = !a->gpu.empty();
  const uint64_t max_bytes = config_.worker_arena_mb << 20;
  const uint64_t& held = gpu ? w->gpu_arena_bytes : w->arena_bytes;
  auto it = w->arena_lru.end();
  while (it != w->arena_lru.begin() && (w->arenas.size() >= config_.worker_arenas || held + a->size > max_bytes)) {
    --it;
    if (busy.count(*it) != 0) continue;
    if (w->arenas.size() < config_.worker_arenas && w->arenas.at(*it).gpu != gpu) continue;
    auto after = std::next(it);
    DropFromWorker(w, *it);  // erases `it`
    it = after;
  }
  Writer m;
  BeginNotice(&m, "arena", a->gpu.empty() ? 1 : 3);
  m.Key("arena"); m.Val(arena);
  if (!a->gpu.empty()) {  // a GPU arena is mapped at its announced size on that GPU
    m.Key("size"); m.Val(static_cast<uint64_t>(a->size));
    m.Key("gpu"); m.Str(a->gpu);
  }
  w->channel->Send(m.body(), {a->fd});
  w->arena_lru.push_front(arena);
  w->arenas[arena] = {w->arena_lru.begin(), a->size, gpu};
  (gpu ? w->gpu_arena_bytes : w->arena_bytes) += a->size;
}

bool WorkerPool::IsWorkerGroup(pid_t pgid) const {
  for (const auto& [slot, w] : workers_) {
    if (w->pid > 0 && w->pid == pgid) return true;
  }
  return false;
}

bool WorkerPool::AllServe(const std::vector<std::string>& models) const {
  for (const auto& [slot, w] : workers_) {
    if (w->gone) return false;
    for (const auto& name : models) {
      auto d = model_devices_.find(name);
      if (d != model_devices_.end() && !gpus_.Places(slot, d->second)) continue;
      if (w->ready_models.count(name) == 0) return false;
    }
  }
  return true;
}

}  // namespace shoal
