#include "supervisor/model_registry.h"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "package_format/served_object.h"
#include "protocol/model_name.h"

namespace shoal {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

ModelRegistry::ModelRegistry(asio::io_context& io, const SupervisorConfig& config, ModelHosts* hosts, JobQueue* jobs)
    : io_(io), config_(config), hosts_(hosts), jobs_(jobs) {}

void ModelRegistry::AddConfigured(const std::string& name, ArchiveRef archive, const std::string& device) {
  Entry& m = models_[name];
  m.archive = std::move(archive);
  m.device = device;
  m.loading = false;
  if (m.archive && m.archive->policy().batching.on()) {  // checked by the archive reader
    m.batching = std::make_shared<const BatchPolicy>(m.archive->policy().batching);
  }
}

std::shared_ptr<const BatchPolicy> ModelRegistry::Batching(const std::string& key) const {
  auto it = models_.find(key);
  return it != models_.end() ? it->second.batching : nullptr;
}

std::string ModelRegistry::Device(const std::string& key) const {
  auto it = models_.find(key);
  return it != models_.end() ? it->second.device : "auto";
}

bool ModelRegistry::TakesBroadcastInputs(const std::string& key) const {
  auto it = models_.find(key);
  return it != models_.end() && it->second.archive && it->second.archive->policy().broadcast_inputs;
}

std::vector<std::string> ModelRegistry::Entry::Methods() const {
  std::vector<std::string> out = archive ? archive->policy().methods : std::vector<std::string>{};
  for (const auto& m : methods) {
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(m);
  }
  return out;
}

Status ModelRegistry::AllowsMethod(const std::string& key, const std::string& method) const {
  if (method.empty() || method == "forward") return Status::Ok();
  auto it = models_.find(key);
  if (it == models_.end()) return Status(Code::kModelNotFound, "model '" + key + "' is not loaded");
  auto allowed = it->second.Methods();
  if (std::find(allowed.begin(), allowed.end(), method) != allowed.end()) return Status::Ok();
  return Status::BadRequest("method '" + method + "' is not allowed; this model allows " +
                            AllowedMethodsText(allowed) + ". An admin allows a method when loading the model " +
                            "(load(..., methods=[\"" + method + "\"]), shoal load --methods " + method +
                            ") or in its manifest (shoal.export(..., methods=[...]))");
}

std::string ModelRegistry::Loaded() const {
  std::string out;
  for (const auto& [name, m] : models_) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "(none)" : out;
}

void ModelRegistry::LoadIn(ModelHosts::Worker worker, const std::string& name, const ArchiveRef& archive,
                           ModelHosts::LoadDone done) {
  auto keep = [this, name] {  // not unloaded or marked failed while the worker loaded it
    auto m = models_.find(name);
    return m != models_.end() && !m->second.failed;
  };
  auto m = models_.find(name);
  std::string device = m != models_.end() ? m->second.device : "auto";
  hosts_->Load(worker, name, archive, device, keep,
               [this, name, done](const Status& st, const std::string& tb, const std::string& engine) {
                 if (auto m = models_.find(name); m != models_.end() && !engine.empty()) m->second.engine = engine;
                 done(st, tb, engine);
               });
}

std::vector<ModelHosts::Worker> ModelRegistry::HostsFor(const std::string& device) const {
  std::vector<ModelHosts::Worker> out;
  for (const auto& w : hosts_->Live()) {
    if (hosts_->Places(w, device)) out.push_back(w);
  }
  return out;
}

Status ModelRegistry::Load(const std::string& name, ArchiveRef archive, Done done, const std::string& device,
                           const BatchOverride& batching, std::vector<std::string> methods) {
  BatchPolicy policy = archive->policy().batching;
  if (batching.max_batch) policy.max_batch = *batching.max_batch;
  if (batching.max_delay_us) policy.max_delay_us = *batching.max_delay_us;
  if (batching.preferred_batch_sizes) policy.preferred_batch_sizes = *batching.preferred_batch_sizes;
  if (!policy.on() && !batching.max_delay_us && !batching.preferred_batch_sizes) {
    policy = {};  // max_batch 1 (or 0) turns the manifest's batching off, with its other keys
  }
  if (auto st = CheckBatchPolicy(policy, "model '" + name + "'"); !st.ok()) return st;
  if (policy.on() && archive->torchscript()) {
    return Status::BadRequest("model '" + name + "': dynamic batching (max_batch " + std::to_string(policy.max_batch) +
                              ") is not supported for TorchScript archives yet; load it without max_batch, or "
                              "export the model as a torch.package (shoal.export) to batch it");
  }
  if (auto old = models_.find(name); old != models_.end()) {
    if (old->second.draining) {
      return Status::BadRequest("model '" + name + "' is being unloaded; load it once that is done");
    }
    if (!old->second.failed) return Status::BadRequest("model '" + name + "' is already loaded; unload it first");
    models_.erase(old);  // a failed model may be loaded again (fixed, presumably)
  }
  Entry& entry = models_[name];
  entry.archive = archive;
  entry.device = device;
  entry.batching = policy.on() ? std::make_shared<const BatchPolicy>(policy) : nullptr;
  entry.methods = std::move(methods);
  entry.loading = true;
  auto live = HostsFor(device);
  if (live.empty()) {
    // No live worker right now: replacements load it when they start.
    entry.loading = false;
    done(Status::Ok(), "");
    return Status::Ok();
  }
  struct Gather {
    size_t remaining = 0;
    Status first_error;
    std::string traceback;
  };
  auto op = std::make_shared<Gather>();
  op->remaining = live.size();
  auto finish = [this, op, name, done]() {
    auto it = models_.find(name);
    if (!op->first_error.ok()) {
      hosts_->Unload(name);
      if (it != models_.end()) models_.erase(it);
      spdlog::warn("load of model '{}' failed: {}", name, op->first_error.ToString());
      // Jobs that queued for it while it loaded get the load's error now, not at their deadline.
      Status err = op->first_error;
      jobs_->FailQueued(name, [name, err](const Job& job) {
        return Status(err.code(), "job " + std::to_string(job.id) + " cannot run: loading model '" + name +
                                      "' failed: " + err.message());
      });
      done(op->first_error, op->traceback);
      return;
    }
    if (it == models_.end()) return done(Status::Ok(), "");
    it->second.loading = false;
    spdlog::info("model '{}' loaded", name);
    done(Status::Ok(), "");
    // Workers started while it loaded (replacements, a bigger pool) load it now.
    for (const auto& w : HostsFor(it->second.device)) {
      if (!hosts_->HasOrLoads(w, name)) {
        LoadIn(w, name, it->second.archive, [this](const Status&, const std::string&, const std::string&) {
          jobs_->Dispatch();
        });
      }
    }
    jobs_->Dispatch();
  };
  for (const auto& w : live) {
    LoadIn(w, name, archive, [op, finish](const Status& st, const std::string& tb, const std::string&) {
      if (!st.ok() && op->first_error.ok()) {
        op->first_error = st;
        op->traceback = tb;
      }
      if (--op->remaining == 0) finish();
    });
  }
  return Status::Ok();
}

void ModelRegistry::LoadInto(ModelHosts::Worker worker,
                             std::function<void(const std::string&, const Status&, const std::string&)> each,
                             std::function<void()> all_done) {
  auto remaining = std::make_shared<int>(0);
  std::vector<std::pair<std::string, ArchiveRef>> todo;
  for (const auto& [name, m] : models_) {
    // A pending client load() covers the workers alive at its start.
    if (!m.loading && !m.failed && hosts_->Places(worker, m.device)) todo.emplace_back(name, m.archive);
  }
  *remaining = static_cast<int>(todo.size());
  if (todo.empty()) return all_done();
  for (const auto& [name, archive] : todo) {
    std::string model = name;
    LoadIn(worker, name, archive, [model, remaining, each, all_done](const Status& st, const std::string& tb, const std::string&) {
      if (--*remaining == 0) all_done();
      each(model, st, tb);
    });
  }
}

Status ModelRegistry::Unload(const std::string& name, std::function<void()> done) {
  auto op = std::make_shared<UnloadOp>();
  for (auto& [key, entry] : models_) {
    bool match = key == name || (name.find(':') == std::string::npos && models_.count(name) == 0 &&
                                 key.rfind(name + ":", 0) == 0);
    if (match && !entry.draining) op->keys.insert(key);
  }
  if (op->keys.empty()) {
    return Status(Code::kModelNotFound, "model '" + name + "' is not loaded (loaded: " + Loaded() + ")");
  }
  // Jobs it has accepted finish (or, after the grace period, are answered); new ones go
  // elsewhere or are refused.
  for (const auto& key : op->keys) models_[key].draining = true;
  op->done = std::move(done);
  op->grace = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(config_.unload_grace_ms));
  std::weak_ptr<UnloadOp> weak = op;
  op->grace->async_wait([this, weak](const boost::system::error_code& ec) {
    auto op = weak.lock();
    if (ec || !op) return;
    for (const auto& key : op->keys) {
      jobs_->FailQueued(key, [this](const Job& job) {
        return Status(Code::kUnavailable, "model '" + job.model + "' was unloaded; job " + std::to_string(job.id) +
                                              " did not start within the " + std::to_string(config_.unload_grace_ms) +
                                              " ms grace period");
      });
    }
    // Running jobs finish first anyway: a worker handles the unload after its job.
    for (auto key : std::set<std::string>(op->keys)) FinishUnload(key);
  });
  unloads_.push_back(op);
  CheckUnloads();
  return Status::Ok();
}

void ModelRegistry::FinishUnload(const std::string& key) {
  models_.erase(key);
  hosts_->Unload(key);
  spdlog::info("model '{}' unloaded", key);
  for (auto it = unloads_.begin(); it != unloads_.end();) {
    auto op = *it;
    op->keys.erase(key);
    if (op->keys.empty()) {
      op->grace->cancel();
      it = unloads_.erase(it);
      op->done();
    } else {
      ++it;
    }
  }
}

void ModelRegistry::CheckUnloads() {
  if (unloads_.empty()) return;
  std::vector<std::string> idle;
  for (const auto& [key, entry] : models_) {
    if (entry.draining && jobs_->Pending(key) == 0) idle.push_back(key);
  }
  for (const auto& key : idle) FinishUnload(key);
}

Result<std::string> ModelRegistry::Resolve(const std::string& name) const {
  if (auto it = models_.find(name); it != models_.end()) {
    if (it->second.draining) {
      return Status(Code::kModelNotFound, "model '" + name + "' is being unloaded and takes no new jobs");
    }
    if (it->second.failed) {
      return Status(Code::kUnavailable, "model '" + name + "' is marked failed: " + it->second.last_error +
                                            "; fix it and load it again (shoal unload/load)");
    }
    return name;
  }
  if (name.find(':') != std::string::npos) {
    return Status(Code::kModelNotFound, "model '" + name + "' is not loaded (loaded: " + Loaded() + ")");
  }
  // The newest version that serves; while a new version loads, the previous one serves.
  std::string best, best_loading;
  for (const auto& [key, entry] : models_) {
    if (key.rfind(name + ":", 0) != 0 || entry.draining || entry.failed) continue;
    std::string version = key.substr(name.size() + 1);
    std::string& slot = entry.loading ? best_loading : best;
    if (slot.empty() || NewerVersion(version, slot.substr(name.size() + 1))) slot = key;
  }
  if (!best.empty()) return best;
  if (!best_loading.empty()) return best_loading;  // queue until it is ready
  return Status(Code::kModelNotFound, "model '" + name + "' is not loaded (loaded: " + Loaded() +
                                          "); load it with `shoal load " + name + " ARCHIVE`");
}

bool ModelRegistry::Ready(const std::string& key) const {
  auto m = models_.find(key);
  return m != models_.end() && !m->second.failed && hosts_->Serving(key) > 0;
}

bool ModelRegistry::AllReady() const {
  for (const auto& [name, m] : models_) {
    if (!Ready(name)) return false;
  }
  return true;
}

CrashVerdict ModelRegistry::RecordCrash(const CrashCharge& charge, const std::string& how) {
  auto it = models_.find(charge.model);
  if (it == models_.end() || it->second.failed) return CrashVerdict::kCounted;
  Entry& m = it->second;
  auto now = Clock::now();
  auto window = std::chrono::seconds(config_.crash_window_s);
  while (!m.crashes.empty() && now - m.crashes.front().when > window) m.crashes.pop_front();
  m.crashes.push_back({now, charge.client});
  m.last_error = "its worker died from " + how;
  size_t limit = static_cast<size_t>(config_.crash_loop_limit);
  size_t loads = 0, own = 0;
  std::set<uid_t> clients;
  for (const auto& c : m.crashes) {
    if (!c.client) {
      ++loads;
    } else {
      clients.insert(*c.client);
      own += charge.client && *c.client == *charge.client;
    }
  }
  std::string window_text = std::to_string(config_.crash_window_s) + " s (last: " + how + ")";
  if (loads >= limit) {
    MarkFailed(charge.model, &m, "it crashed " + std::to_string(loads) + " workers while loading within " + window_text);
    return CrashVerdict::kModelFailed;
  }
  if (m.crashes.size() - loads >= limit && clients.size() >= 2) {
    MarkFailed(charge.model, &m, "it crashed " + std::to_string(m.crashes.size() - loads) + " workers for " +
                                     std::to_string(clients.size()) + " different clients within " + window_text);
    return CrashVerdict::kModelFailed;
  }
  if (charge.client && own >= limit) {
    uid_t uid = *charge.client;
    std::string why = "its jobs from uid " + std::to_string(uid) + " crashed " + std::to_string(own) +
                      " workers within " + window_text;
    m.refused[uid] = {now + window, why};
    spdlog::warn("model '{}' refuses jobs from uid {} for {} s: {}; other clients keep it", charge.model, uid,
                 config_.crash_window_s, why);
    return CrashVerdict::kClientRefused;
  }
  return CrashVerdict::kCounted;
}

void ModelRegistry::MarkFailed(const std::string& key, Entry* m, const std::string& why) {
  m->failed = true;
  m->last_error = why;
  spdlog::error("model '{}' is marked failed: {}", key, why);
  if (on_failed_) on_failed_(key, why);
  jobs_->FailQueued(key, [key, why](const Job&) {
    return Status(Code::kUnavailable, "model '" + key + "' is marked failed: " + why);
  });
  hosts_->Unload(key);
}

Status ModelRegistry::Admits(const std::string& key, uid_t client) const {
  auto it = models_.find(key);
  if (it == models_.end()) return Status::Ok();
  auto r = it->second.refused.find(client);
  if (r == it->second.refused.end()) return Status::Ok();
  auto left = std::chrono::duration_cast<std::chrono::seconds>(r->second.until - Clock::now()).count();
  if (left < 0) return Status::Ok();
  return Status(Code::kUnavailable, "model '" + key + "' refuses jobs from uid " + std::to_string(client) +
                                        " for another " + std::to_string(left + 1) + " s: " + r->second.why +
                                        "; other clients are still served. Fix the input that crashes it, "
                                        "or wait (crash_window_s)");
}

std::vector<ModelRegistry::Info> ModelRegistry::List() const {
  std::vector<Info> out;
  for (const auto& [name, m] : models_) {
    Info i;
    i.name = name;
    i.engine = m.engine;
    i.path = m.archive ? m.archive->label() : "";
    i.entry = m.archive ? m.archive->entry() : "";
    if (m.archive) {
      i.inputs = m.archive->policy().inputs;
      i.outputs = m.archive->policy().outputs;
    }
    i.methods = m.Methods();
    i.device = m.device;
    i.ready = Ready(name);
    i.queued = jobs_->Queued(name);
    i.failed = m.failed;
    i.last_error = m.last_error;
    i.batching = m.batching;
    i.batches = jobs_->Batches(name);
    auto now = Clock::now();
    for (const auto& [uid, r] : m.refused) {
      if (r.until > now) i.refused.emplace_back(uid, std::chrono::duration<double>(r.until - now).count());
    }
    out.push_back(std::move(i));
  }
  return out;
}

bool ModelRegistry::Holds(const std::string& key, const ArchiveRef& archive) const {
  auto it = models_.find(key);
  return it != models_.end() && it->second.archive == archive && !it->second.draining;
}

std::vector<std::string> ModelRegistry::Names() const {
  std::vector<std::string> out;
  for (const auto& [name, m] : models_) out.push_back(name);
  return out;
}

}  // namespace shoal
