// WorkerPool, the requests side: jobs on slots (SlotPool) and models in workers
// (ModelHosts). The process side (spawn, reap, retire) is worker_pool.cc.
#include <spdlog/spdlog.h>

#include "supervisor/worker_pool.h"

#include "shm/gpu_memory.h"

namespace shoal {

using Clock = std::chrono::steady_clock;

std::optional<SlotPool::Slot> WorkerPool::Pick(const Job& job, bool* any_free) const {
  // Preferring a slot that ran this model last (its code and weights are warm in that
  // interpreter's caches), then the least busy worker.
  const std::string& model = job.model;
  const WorkerHandle* best = nullptr;
  int best_interp = -1;
  bool best_warm = false;
  *any_free = false;
  for (const auto& [slot, w] : workers_) {
    if (w->gone || w->retiring) continue;
    int i = w->FreeInterpreter(model);
    if (i < 0) continue;
    *any_free = true;
    if (w->ready_models.count(model) == 0) continue;
    if (!job.gpu.empty() && gpus_.BusOf(slot) != job.gpu) continue;  // could not map its inputs
    bool warm = w->last_model[static_cast<size_t>(i)] == model;
    if (best == nullptr || (warm && !best_warm) || (warm == best_warm && w->Running() < best->Running())) {
      best = w.get();
      best_interp = i;
      best_warm = warm;
    }
  }
  if (best != nullptr) return Slot{best->slot, best_interp};
  if (config_.send_ahead_ms == 0) return std::nullopt;
  // Every interpreter that could run it is busy: one whose job ends soon (its model's jobs
  // are short and it has not run long) may take it ahead of its turn.
  // A batching model's jobs wait in the queue instead, where batches form.
  const Job* best_head = nullptr;
  for (const auto& [slot, w] : workers_) {
    if (w->gone || w->retiring) continue;
    int i = w->AheadInterpreter(model, std::chrono::milliseconds(config_.send_ahead_ms));
    if (i < 0) continue;
    *any_free = true;
    if (job.batching || w->ready_models.count(model) == 0) continue;
    if (!job.gpu.empty() && gpus_.BusOf(slot) != job.gpu) continue;
    const Job* head = w->jobs[static_cast<size_t>(i)].get();
    bool warm = head->model == model;
    bool best_warm = best_head != nullptr && best_head->model == model;
    if (best_head == nullptr || (warm && !best_warm) || (warm == best_warm && head->started < best_head->started)) {
      best = w.get();
      best_interp = i;
      best_head = head;
    }
  }
  if (best == nullptr) return std::nullopt;
  return Slot{best->slot, best_interp};
}

void WorkerPool::Place(WorkerHandle* w, int interp, Job* job) {
  for (const auto& d : job->inputs) SendArenaIfNeeded(w, d.arena);
  job->worker = w->slot;
  job->interp = interp;
  job->generation = w->generation;
  job->worker_gpu = gpus_.BusOf(w->slot);
  w->pending_model[job->id] = job->model;
}

void WorkerPool::BeginInfer(Writer* m, int interp, const Job& job, bool batch) const {
  // A job sent ahead carries its deadline: its turn may come after it (a job that starts at
  // once runs, and is killed with its worker if it overstays its deadline and the grace).
  const bool deadline = !batch && job.ahead && job.deadline_at.has_value();
  uint32_t fields = (job.host_outputs ? 7 : 6) - (batch ? 1 : 0) + (job.call.args.empty() ? 0 : 1) +
                    (job.call.kwargs.empty() ? 0 : 1) + (job.call.method.empty() ? 0 : 1) + (deadline ? 1 : 0);
  BeginRequest(m, "infer", job.id, fields);
  m->Key("interp"); m->Val(static_cast<uint64_t>(interp));
  m->Key("model"); m->Str(job.model);
  if (!batch) {  // a batch names each member's connection
    m->Key("client"); m->Val(job.client_id);
  }
  if (deadline) {  // CLOCK_MONOTONIC ns: the worker skips the job if its turn comes after it
    m->Key("deadline");
    m->Val(static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(job.deadline_at->time_since_epoch()).count()));
  }
  m->Key("out_bytes"); m->Val(config_.output_arena_mb << 20);
  m->Key("out_arenas"); m->Val(config_.output_arenas);
  if (job.host_outputs) {
    m->Key("outputs"); m->Str("cpu");
  }
  // The call's structure as the client sent it (shoald checked it; never in a batch).
  if (!job.call.args.empty()) {
    m->Key("args"); PackEncoded(m, job.call.args);
  }
  if (!job.call.kwargs.empty()) {
    m->Key("kwargs"); PackEncoded(m, job.call.kwargs);
  }
  if (!job.call.method.empty()) {
    m->Key("method"); m->Str(job.call.method);
  }
}

void WorkerPool::Run(Slot slot, const std::shared_ptr<Job>& job, ReplyFn done) {
  WorkerHandle* w = workers_.at(slot.worker).get();
  auto i = static_cast<size_t>(slot.interp);
  // First: the arenas it reads are not dropped below. Behind a running job it waits in
  // the worker's queue for that job's end (Pick chose it for that).
  job->ahead = w->jobs[i] != nullptr;
  (job->ahead ? w->ahead[i] : w->jobs[i]) = job;
  w->last_model[i] = job->model;
  Place(w, slot.interp, job.get());
  Writer m;
  BeginInfer(&m, slot.interp, *job, false);
  m.Key("inputs");
  m.pk().pack_array(static_cast<uint32_t>(job->inputs.size()));
  for (const auto& d : job->inputs) d.Pack(&m);
  uint64_t gen = w->generation;
  Send(w, job->id, m.body(), [this, gen, job, done](const Status& st, const MapView* reply) {
    FreeSlotIfDone(job, gen);
    done(st, reply);
  });
}

void WorkerPool::RunBatch(Slot slot, const std::vector<std::shared_ptr<Job>>& jobs, MemberReplyFn done) {
  WorkerHandle* w = workers_.at(slot.worker).get();
  const auto& lead = jobs.front();
  lead->batch.assign(jobs.begin() + 1, jobs.end());
  w->jobs[static_cast<size_t>(slot.interp)] = lead;  // first: the arenas they read are not dropped below
  w->last_model[static_cast<size_t>(slot.interp)] = lead->model;
  for (const auto& job : jobs) Place(w, slot.interp, job.get());
  // One message: {"op":"infer","id":first member, ..., "batch":[{"job","client","inputs"}]}
  // (docs/protocol.md); the worker answers each member on its own, under the member's id.
  Writer m;
  BeginInfer(&m, slot.interp, *lead, true);
  m.Key("batch");
  m.pk().pack_array(static_cast<uint32_t>(jobs.size()));
  for (const auto& job : jobs) {
    m.Map(3);
    m.Key("job"); m.Val(job->id);
    m.Key("client"); m.Val(job->client_id);
    m.Key("inputs");
    m.pk().pack_array(static_cast<uint32_t>(job->inputs.size()));
    for (const auto& d : job->inputs) d.Pack(&m);
  }
  uint64_t gen = w->generation;
  for (const auto& job : jobs) {
    w->pending[job->id] = [this, gen, lead, job, done](const Status& st, const MapView* reply) {
      FreeSlotIfDone(lead, gen);
      done(job, st, reply);
    };
  }
  w->channel->Send(m.body());
}

void WorkerPool::FreeSlotIfDone(const std::shared_ptr<Job>& lead, uint64_t generation) {
  WorkerHandle* w = Find(lead->worker, generation);
  if (w == nullptr || w->jobs[static_cast<size_t>(lead->interp)] != lead) return;
  if (w->pending.count(lead->id) != 0) return;  // a batch's members are answered in turn
  for (const auto& m : lead->batch) {
    if (w->pending.count(m->id) != 0) return;
  }
  // The job sent ahead to this interpreter, if any, starts now.
  auto& next = w->jobs[static_cast<size_t>(lead->interp)];
  next = std::move(w->ahead[static_cast<size_t>(lead->interp)]);
  if (next) {
    next->ahead = false;
    next->started = Clock::now();
  }
  // kill_timer stays armed: with K interpreters this reply may come from another job
  // than the one whose worker is being killed.
  ++w->jobs_run;
  if (config_.max_jobs_per_worker > 0 && w->jobs_run >= config_.max_jobs_per_worker && !w->retiring) {
    w->retiring = true;  // recycled once this reply is through (RetireIfDone)
    spdlog::info("{} ran {} jobs: recycling it", w->Describe(), w->jobs_run);
  }
}

bool WorkerPool::IsRunning(const Job& job) const {
  const WorkerHandle* w = Find(job.worker, job.generation);
  if (w == nullptr || job.interp < 0) return false;
  const auto& lead = w->jobs[static_cast<size_t>(job.interp)];
  if (lead.get() == &job) return lead->batch.empty() || w->pending.count(job.id) != 0;
  if (!lead) return false;
  for (const auto& m : lead->batch) {
    if (m.get() == &job) return w->pending.count(job.id) != 0;  // not answered yet
  }
  return false;
}

void WorkerPool::Terminate(const Job& job, const std::string& why) {
  if (WorkerHandle* w = Find(job.worker, job.generation)) {
    w->killed_for_deadline = true;
    TerminateWorker(w, why);
  }
}

void WorkerPool::FreeBlocks(const Job& job, uint64_t arena, const std::vector<uint64_t>& blocks) {
  if (WorkerHandle* w = Find(job.worker, job.generation)) SendRelease(w, arena, blocks);
}

int WorkerPool::RunningJobs(const std::string& model) const {
  int n = 0;
  for (const auto& [slot, w] : workers_) {
    if (w->gone) continue;
    for (const auto& j : w->jobs) {
      if (j != nullptr && (model.empty() || j->model == model)) n += 1 + static_cast<int>(j->batch.size());
    }
    for (const auto& j : w->ahead) n += j != nullptr && (model.empty() || j->model == model);
  }
  return n;
}

size_t WorkerPool::Serving(const std::string& model) const {
  size_t n = 0;
  for (const auto& [slot, w] : workers_) n += !w->gone && w->ready_models.count(model) != 0;
  return n;
}

bool WorkerPool::PlacesOnGpu(const std::string& device, const std::string& bus) const {
  for (int slot = 0; slot < config_.workers; ++slot) {
    if (gpus_.BusOf(slot) == bus && gpus_.Places(slot, device)) return true;
  }
  return false;
}

std::vector<ModelHosts::Worker> WorkerPool::Live() const {
  std::vector<Worker> out;
  for (const auto& [slot, w] : workers_) {
    if (!w->gone) out.push_back({slot, w->generation});
  }
  return out;
}

void WorkerPool::Load(Worker worker, const std::string& name, const ArchiveRef& archive, const std::string& device,
                      std::function<bool()> keep, LoadDone done) {
  model_devices_[name] = device;
  WorkerHandle* w = Find(worker.slot, worker.generation);
  if (w == nullptr) {
    return done(Status(Code::kWorkerCrashed, "model '" + name + "': worker " + std::to_string(worker.slot) + " is gone"),
                "", "");
  }
  if (auto st = archive->Unchanged(name); !st.ok()) return done(st, "", "");
  // One copy of the weights per GPU: the first load there uploads them, the others wait
  // for it and then map that copy (supervisor/gpu_weights.h).
  const std::string bus = gpus_.BusOf(worker.slot);
  GpuWeights::Next weights;
  const std::string on = GpuPlacement::WorkerDevice(device);
  if (config_.share_gpu_weights && !bus.empty() && (on == "cuda" || (on == "auto" && archive->saved_on_cuda()))) {
    weights = weights_.Begin(name, bus, [this, worker, name, archive, device, keep, done] {
      if (!keep()) return done(Status(Code::kUnavailable, "model '" + name + "' was unloaded while it loaded"), "", "");
      Load(worker, name, archive, device, keep, done);
    });
    if (weights.step == GpuWeights::Step::kWait) return;
  }
  const bool upload = weights.step == GpuWeights::Step::kUpload;
  const bool map = weights.step == GpuWeights::Step::kMap;
  uint64_t rid = next_request_++;
  Writer m;
  BeginRequest(&m, "load", rid, (upload || map ? 4 : 3) + (archive->entry().empty() ? 0 : 1));
  m.Key("name"); m.Str(name);
  m.Key("path"); m.Str(archive->label());  // for messages only: the worker loads from the file sent along
  if (!archive->entry().empty()) {
    m.Key("entry"); m.Str(archive->entry());  // the pickle to serve, as shoald checked it
  }
  m.Key("device"); m.Str(GpuPlacement::WorkerDevice(device));
  if (upload) {
    m.Key("gpu_weights"); m.Str("upload");
  } else if (map) {
    m.Key("gpu_weights"); m.Val(weights.bytes);  // the allocation is the second fd
  }
  w->pending_model[rid] = name;
  // The deadline counts from when the worker exists (a zygote that is still starting may
  // take long to fork it); until the zygote names its pid, the load waits unarmed.
  w->load_deadlines[rid] = {name, nullptr};
  if (w->pid > 0) ArmLoadDeadline(w, rid);
  std::vector<std::shared_ptr<OwnedFd>> fds = {archive->fd()};
  if (map) fds.push_back(weights.memory);
  const uint64_t ticket = upload ? weights.ticket : 0;
  Send(w, rid, m.body(), [this, worker, rid, name, bus, ticket, keep, done](const Status& st, const MapView* reply) {
    std::shared_ptr<OwnedFd> uploaded;
    if (WorkerHandle* w = Find(worker.slot, worker.generation)) {
      w->load_deadlines.erase(rid);
      if (auto u = w->uploaded_weights.find(rid); u != w->uploaded_weights.end()) {
        uploaded = std::move(u->second);
        w->uploaded_weights.erase(u);
      }
    }
    std::string tb, engine;
    Status result = st;
    uint64_t weight_bytes = 0;
    if (st.ok() && reply != nullptr) {
      auto ok = reply->Bool("ok");
      if (!ok.ok() || !*ok) result = StatusFromReply(*reply, &tb);
      if (auto e = reply->OptStr("engine"); e.ok() && e->has_value()) engine = **e;
      weight_bytes = reply->OptUint("gpu_weights").value_or(std::nullopt).value_or(0);
    }
    if (ticket != 0) {
      if (result.ok() && uploaded && !CheckGpuArenaFd(uploaded->get(), weight_bytes).ok()) {
        result = Status::Internal("model '" + name + "': the worker's uploaded weights are not a GPU allocation "
                                  "of the size it announced");
      }
      if (result.ok()) {
        if (uploaded) spdlog::info("model '{}': {} bytes of weights on GPU {}, shared by its workers", name, weight_bytes, bus);
        weights_.Uploaded(name, bus, ticket, uploaded, weight_bytes);
      } else {
        weights_.Failed(name, bus, ticket);
      }
    }
    if (WorkerHandle* w = Find(worker.slot, worker.generation); result.ok() && w != nullptr) {
      if (keep()) {
        w->ready_models.insert(name);
      } else {
        SendUnload(w, name);
      }
    }
    if (!result.ok() && st.code() == Code::kWorkerCrashed) {
      result = Status(Code::kWorkerCrashed, "model '" + name + "': " + st.message());
    }
    done(result, tb, engine);
  }, fds);
}

void WorkerPool::ArmLoadDeadline(WorkerHandle* w, uint64_t rid) {
  auto it = w->load_deadlines.find(rid);
  if (it == w->load_deadlines.end() || it->second.second) return;
  std::string name = it->second.first;
  Worker worker{w->slot, w->generation};
  auto& deadline = it->second.second;
  deadline = std::make_unique<boost::asio::steady_timer>(io_, std::chrono::milliseconds(config_.load_timeout_ms));
  deadline->async_wait([this, worker, rid, name](const boost::system::error_code& ec) {
    WorkerHandle* w = Find(worker.slot, worker.generation);
    if (ec || w == nullptr) return;
    auto it = w->pending.find(rid);
    if (it == w->pending.end()) return;
    auto fn = std::move(it->second);
    w->pending.erase(it);
    w->pending_model.erase(rid);
    w->killed_for_deadline = true;  // the hang is reported to whoever loads, not charged to a client
    std::string why = "loading model '" + name + "' in " + w->Describe() + " took longer than load_timeout_ms (" +
                      std::to_string(config_.load_timeout_ms) + " ms)";
    fn(Status(Code::kTimeout, why + "; the worker is restarted. Check what the model does when it is unpickled"),
       nullptr);
    if ((w = Find(worker.slot, worker.generation)) != nullptr) TerminateWorker(w, why);
  });
}

bool WorkerPool::Places(Worker worker, const std::string& device) const { return gpus_.Places(worker.slot, device); }

Result<std::string> WorkerPool::CheckDevice(const std::string& model, const std::string& device) const {
  return gpus_.CheckDevice(model, device);
}

bool WorkerPool::HasOrLoads(Worker worker, const std::string& name) const {
  const WorkerHandle* w = Find(worker.slot, worker.generation);
  if (w == nullptr) return true;  // nothing to do there
  if (w->ready_models.count(name) != 0) return true;
  for (const auto& [rid, m] : w->pending_model) {
    if (m == name) return true;
  }
  return false;
}

void WorkerPool::Unload(const std::string& name) {
  model_devices_.erase(name);
  weights_.Forget(name);  // the memory goes once the workers below unmapped it too
  for (auto& [slot, w] : workers_) {
    if (!w->gone && w->ready_models.erase(name) > 0) SendUnload(w.get(), name);
  }
}

void WorkerPool::SendUnload(WorkerHandle* w, const std::string& model) {
  uint64_t rid = next_request_++;
  Writer u;
  BeginRequest(&u, "unload", rid, 1);
  u.Key("name"); u.Str(model);
  Send(w, rid, u.body(), [](const Status&, const MapView*) {});
}

std::vector<WorkerPool::WorkerInfo> WorkerPool::Describe() const {
  std::vector<WorkerInfo> out;
  for (const auto& [slot, w] : workers_) {
    WorkerInfo info;
    info.slot = slot;
    info.pid = w->pid;
    int running = w->Running();
    info.state = w->gone ? "restarting"
                 : running == 0 ? "idle"
                 : running < static_cast<int>(w->jobs.size()) ? "partly busy"
                                                               : "busy";
    for (size_t k = 0; k < w->jobs.size(); ++k) {
      const auto& job = w->jobs[k];
      InterpInfo i;
      i.busy = job != nullptr;
      if (job) {
        i.job = job->id;
        i.model = job->model;
      }
      if (const auto& next = w->ahead[k]) {
        i.next = next->id;
        i.next_model = next->model;
      }
      info.interps.push_back(i);
    }
    info.models.assign(w->ready_models.begin(), w->ready_models.end());
    info.gpu = gpus_.BusOf(slot);
    if (!w->gone && w->pid > 0) info.memory = memory_.Get(w->pid);
    info.memory_limit = w->memory_limit;
    info.memory_by = w->memory_by;
    info.client_arenas = w->arenas.size();
    for (const auto& [owner, u] : w->output_usage) {
      info.output_bytes += u.bytes;
      info.output_arenas += u.arenas;
    }
    out.push_back(std::move(info));
  }
  return out;
}

}  // namespace shoal
