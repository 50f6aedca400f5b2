#include "supervisor/supervisor.h"

#include "package_format/archive_reader.h"
#include "protocol/channel.h"
#include "shm/memfd.h"
#include "supervisor/config.h"

#include <grp.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace shoal {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;
using Clock = std::chrono::steady_clock;

namespace {

std::string Join(const std::map<std::string, ModelEntry>& models) {
  std::string out;
  for (const auto& [name, m] : models) out += (out.empty() ? "" : ", ") + name;
  return out.empty() ? "(none)" : out;
}

struct ProcessMemory {
  uint64_t rss_kb = 0;
  uint64_t pss_kb = 0;  // shared pages counted once across the processes sharing them
};

// A process's Rss and Pss in kB (/proc/PID/smaps_rollup), zeros if unknown.
ProcessMemory ReadProcessMemory(pid_t pid) {
  ProcessMemory m;
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Rss:", 0) == 0) m.rss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
    if (line.rfind("Pss:", 0) == 0) m.pss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
  }
  return m;
}

}  // namespace

Supervisor::Supervisor(asio::io_context& io, SupervisorConfig config)
    : io_(io), config_(std::move(config)), signals_(io) {}

Supervisor::~Supervisor() {
  for (auto& [slot, w] : workers_) {
    if (!w->gone && w->pid > 0) {
      kill(w->pid, SIGKILL);
      waitpid(w->pid, nullptr, 0);
    }
  }
  if (zygote_ && !zygote_->gone && zygote_->pid > 0) {
    kill(zygote_->pid, SIGKILL);
    waitpid(zygote_->pid, nullptr, 0);
  }
}

Status Supervisor::Start() {
  started_ = Clock::now();
  if (config_.workers < 1 || config_.workers > 1024) {
    return Status::BadRequest("--workers must be between 1 and 1024");
  }
  if (config_.worker_binary.empty()) {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    config_.worker_binary = (self.parent_path() / "shoal-worker").string();
  }
  if (access(config_.worker_binary.c_str(), X_OK) != 0) {
    return Status::FromErrno("worker binary " + config_.worker_binary + " is not executable "
                             "(pass --worker-binary PATH)", errno);
  }

  if (!config_.admin_group.empty()) {
    struct group* g = getgrnam(config_.admin_group.c_str());
    if (g == nullptr) {
      return Status::BadRequest("admin_group '" + config_.admin_group + "' does not exist (create it or "
                                "change admin_group in the configuration)");
    }
    admin_gid_ = g->gr_gid;
  }
  if (config_.interpreters < 1 || config_.interpreters > 64) {
    return Status::BadRequest("--interpreters must be between 1 and 64");
  }
  if (config_.interpreters > 1) {
    if (config_.interpreter_cache.empty()) {
      std::string runtime = getenv("RUNTIME_DIRECTORY") ? getenv("RUNTIME_DIRECTORY") : "";
      runtime = runtime.substr(0, runtime.find(':'));
      if (runtime.empty()) runtime = std::filesystem::path(config_.socket_path).parent_path().string();
      config_.interpreter_cache = runtime + "/interpreters";
    }
    if (auto st = CheckInterpreters(); !st.ok()) return st;
  }
  if (config_.listen_fd >= 0) {
    // Socket activation: systemd owns the socket file, its mode and its group.
    acceptor_ = std::make_unique<local::acceptor>(io_);
    boost::system::error_code aec;
    acceptor_->assign(local(), config_.listen_fd, aec);
    if (aec) return Status(Code::kIoError, "cannot adopt the socket passed by systemd: " + aec.message());
    config_.socket_path = "(socket from systemd)";
  } else {
    // A stale socket file from a dead shoald is removed; a live one is left alone.
    std::filesystem::path sp(config_.socket_path);
    std::error_code ec;
    std::filesystem::create_directories(sp.parent_path(), ec);
    if (std::filesystem::exists(sp)) {
      local::socket probe(io_);
      boost::system::error_code pec;
      probe.connect(local::endpoint(config_.socket_path), pec);
      if (!pec) return Status(Code::kUnavailable, "another shoald is serving " + config_.socket_path);
      std::filesystem::remove(sp, ec);
    }
    try {
      acceptor_ = std::make_unique<local::acceptor>(io_, local::endpoint(config_.socket_path));
    } catch (const std::exception& e) {
      return Status(Code::kIoError, "cannot listen on " + config_.socket_path + ": " + e.what());
    }
    // Who may connect is decided by the socket's directory; what they may do, per
    // operation (SO_PEERCRED).
    chmod(config_.socket_path.c_str(), 0666);
  }

  signals_.add(SIGCHLD);
  signals_.add(SIGTERM);
  signals_.add(SIGINT);
  signals_.add(SIGHUP);
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (!ec) OnSignal(sig);
  });
  signal(SIGPIPE, SIG_IGN);

  for (const auto& [name, path] : config_.models) {
    ModelEntry& m = models_[name];
    m.path = path;
    m.loading = false;
  }
  notifier_.Notify("STATUS=starting " + std::to_string(config_.workers) + " workers, loading " +
                   std::to_string(models_.size()) + " models");
  // Workers forked by the zygote are reparented to us when their middle process exits:
  // as a subreaper we wait for them (and learn how they died) ourselves.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  if (config_.zygote) StartZygote();
  for (int slot = 0; slot < config_.workers; ++slot) SpawnWorker(slot);
  Accept();
  spdlog::info("shoald listening on {} with {} workers", config_.socket_path, config_.workers);
  if (notifier_.watchdog_interval()) Watchdog();
  CheckReady();
  return Status::Ok();
}

void Supervisor::CheckReady() {
  if (ready_sent_ || stopping_) return;
  // Ready means full capacity: every worker has loaded every configured model.
  for (const auto& [slot, w] : workers_) {
    if (w->gone) return;
    for (const auto& [name, m] : models_) {
      if (w->ready_models.count(name) == 0) return;
    }
  }
  ready_sent_ = true;
  notifier_.Notify("READY=1\nSTATUS=serving " + std::to_string(models_.size()) + " models with " +
                   std::to_string(config_.workers) + " workers on " + config_.socket_path);
}

void Supervisor::Watchdog() {
  // Pinged from the loop itself: a wedged loop stops the pings and systemd restarts us.
  notifier_.Notify("WATCHDOG=1");
  watchdog_timer_ = std::make_unique<asio::steady_timer>(io_, *notifier_.watchdog_interval());
  watchdog_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (!ec && !finished_) Watchdog();
  });
}

// ---------------------------------------------------------------------------------------
// clients

void Supervisor::Accept() {
  acceptor_->async_accept([this](const boost::system::error_code& ec, local::socket sock) {
    if (ec == asio::error::operation_aborted || stopping_) return;
    if (!ec) {
      auto s = std::make_shared<ClientSession>();
      s->id = next_session_++;
      int fd = sock.release();
      if (auto st = ReadPeerCredentials(fd, s.get()); !st.ok()) spdlog::warn("{}", st.ToString());
      s->channel = std::make_shared<AsyncChannel>(io_, fd);
      sessions_[s->id] = s;
      std::weak_ptr<ClientSession> weak = s;
      s->channel->Start(
          [this, weak](std::string body, std::vector<int>* fds) {
            if (auto s = weak.lock()) OnClientFrame(s, std::move(body), fds);
          },
          [this, weak](const Status& why) {
            auto s = weak.lock();
            if (!s) return;
            if (why.code() == Code::kBadRequest) {
              // A framing error cannot be resynchronised: say why, then hang up.
              spdlog::warn("{}: {}", s->Describe(), why.message());
              s->channel->Send(ErrorReply(0, why));
            }
            OnClientClosed(s);
          });
    } else {
      spdlog::warn("accept: {}", ec.message());
    }
    Accept();
  });
}

void Supervisor::ReplyOk(const std::shared_ptr<ClientSession>& s, uint64_t id) {
  Writer w;
  BeginReply(&w, id, 0);
  s->channel->Send(w.body());
}

void Supervisor::ReplyError(const std::shared_ptr<ClientSession>& s, uint64_t id, const Status& st,
                            std::string_view traceback) {
  s->channel->Send(ErrorReply(id, st, traceback));
}

void Supervisor::OnClientFrame(const std::shared_ptr<ClientSession>& s, std::string body,
                               std::vector<int>* fds) {
  auto oh = Decode(body);
  if (!oh.ok()) return ReplyError(s, 0, oh.status());
  MapView m(oh->get());
  uint64_t id = 0;
  if (auto rid = m.OptUint("id"); rid.ok() && rid->has_value()) id = **rid;
  auto fail = [&](const Status& st) { ReplyError(s, id, st); };
  if (auto v = m.Uint("v"); !v.ok() || *v != kProtocolVersion) {
    return fail(Status::BadRequest("unsupported protocol version (this shoald speaks v" +
                                   std::to_string(kProtocolVersion) + "); upgrade the client"));
  }
  auto op = m.Str("op");
  if (!op.ok()) return fail(op.status());
  if (*op == "infer") {
    if (auto st = HandleInfer(s, id, m); !st.ok()) ReplyError(s, id, st);
  } else if (*op == "register_arena") {
    if (auto st = HandleRegisterArena(s, id, fds); !st.ok()) fail(st);
  } else if (*op == "load") {
    HandleLoad(s, id, m);
  } else if (*op == "unload") {
    HandleUnload(s, id, m);
  } else if (*op == "models") {
    HandleModels(s, id);
  } else if (*op == "status") {
    HandleStatus(s, id);
  } else if (*op == "health") {
    HandleHealth(s, id);
  } else if (*op == "ping") {
    ReplyOk(s, id);
  } else {
    fail(Status::BadRequest("unknown operation '" + *op + "'"));
  }
}

void Supervisor::OnClientClosed(const std::shared_ptr<ClientSession>& s) {
  s->closed = true;
  // Queued jobs of this client are dropped; running ones finish and are discarded.
  for (auto it = queue_.begin(); it != queue_.end();) {
    if ((*it)->client.lock() == s) {
      auto job = Dequeue(it);
      job->answered = true;
      if (job->deadline) job->deadline->cancel();
    } else {
      ++it;
    }
  }
  for (uint64_t a : s->arenas) DropArena(a);
  sessions_.erase(s->id);
}

Status Supervisor::HandleRegisterArena(const std::shared_ptr<ClientSession>& s, uint64_t id,
                                       std::vector<int>* fds) {
  if (fds->empty()) return Status::BadRequest("register_arena needs a memfd attached (SCM_RIGHTS)");
  auto fd = std::make_shared<OwnedFd>(fds->front());  // closed on every error path below
  fds->erase(fds->begin());
  if (s->arenas.size() >= 64) return Status::BadRequest("too many arenas on one connection (64 at most)");
  auto size = CheckArenaFd(fd->get());
  if (!size.ok()) return size.status();
  ArenaEntry a;
  a.id = next_arena_++;
  a.owner = s->id;
  a.size = *size;
  a.fd = fd;
  s->arenas.insert(a.id);
  arenas_[a.id] = a;
  Writer w;
  BeginReply(&w, id, 1);
  w.Key("arena"); w.Val(a.id);
  s->channel->Send(w.body());
  return Status::Ok();
}

void Supervisor::DropArena(uint64_t arena) {
  for (auto& [slot, w] : workers_) {
    if (w->gone || w->arenas.erase(arena) == 0) continue;
    Writer m;
    BeginNotice(&m, "drop_arena", 1);
    m.Key("arena"); m.Val(arena);
    w->channel->Send(m.body());
  }
  arenas_.erase(arena);
}

bool Supervisor::IsAdmin(const ClientSession& s) const {
  if (s.uid == 0 || s.uid == geteuid()) return true;
  if (admin_gid_ == static_cast<gid_t>(-1)) return false;
  if (s.gid == admin_gid_) return true;
  for (gid_t g : s.groups) {
    if (g == admin_gid_) return true;
  }
  return false;
}

void Supervisor::HandleLoad(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m) {
  if (!IsAdmin(*s)) {
    spdlog::warn("refused load from {}: not an administrator", s->Describe());
    return ReplyError(s, id, Status::BadRequest(
                                 "load refused for uid " + std::to_string(s->uid) +
                                 ": loading a model runs its code; only root, shoald's own user" +
                                 (config_.admin_group.empty() ? std::string()
                                                              : " or members of group '" + config_.admin_group + "'") +
                                 " may load models"));
  }
  auto name = m.Str("name");
  auto path = m.Str("path");
  if (!name.ok()) return ReplyError(s, id, name.status());
  if (!path.ok()) return ReplyError(s, id, path.status());
  auto colon = name->find(':');
  if (name->empty() || name->size() > 128 || name->find_first_of(" /\n\t") != std::string::npos ||
      (colon != std::string::npos && (colon == 0 || colon + 1 == name->size() ||
                                      name->find(':', colon + 1) != std::string::npos))) {
    return ReplyError(s, id, Status::BadRequest("model name '" + *name +
                                                "' is invalid: use NAME or NAME:VERSION, 1-128 characters, "
                                                "no spaces or '/'"));
  }
  if (path->empty() || (*path)[0] != '/') {
    return ReplyError(s, id, Status::BadRequest("archive path '" + *path + "' must be absolute"));
  }
  if (access(path->c_str(), R_OK) != 0) {
    return ReplyError(s, id, Status::FromErrno("model '" + *name + "': cannot read archive " + *path, errno));
  }
  // Refuse broken archives here, before any worker runs code from them.
  if (auto info = InspectArchiveFile(*path); !info.ok()) {
    return ReplyError(s, id, Status(info.status().code(), "model '" + *name + "': " + info.status().message()));
  }
  if (auto old = models_.find(*name); old != models_.end()) {
    if (old->second.draining) {
      return ReplyError(s, id, Status::BadRequest("model '" + *name + "' is being unloaded; load it once that is done"));
    }
    if (!old->second.failed) {
      return ReplyError(s, id, Status::BadRequest("model '" + *name + "' is already loaded; unload it first"));
    }
    models_.erase(old);  // a failed model may be loaded again (fixed, presumably)
  }
  ModelEntry& entry = models_[*name];
  entry.path = *path;
  entry.loading = true;
  struct LoadOp {
    int remaining = 0;
    Status first_error;
    std::string traceback;
  };
  auto op = std::make_shared<LoadOp>();
  std::vector<WorkerHandle*> live;
  for (auto& [slot, w] : workers_) {
    if (!w->gone) live.push_back(w.get());
  }
  op->remaining = static_cast<int>(live.size());
  std::weak_ptr<ClientSession> weak = s;
  std::string model = *name;
  auto finish = [this, op, weak, id, model]() {
    auto it = models_.find(model);
    auto s = weak.lock();
    if (!op->first_error.ok()) {
      for (auto& [slot, w] : workers_) {
        if (!w->gone && w->ready_models.erase(model) > 0) {
          SendUnload(w.get(), model);
        }
      }
      if (it != models_.end()) models_.erase(it);
      spdlog::warn("load of model '{}' failed: {}", model, op->first_error.ToString());
      if (s) ReplyError(s, id, op->first_error, op->traceback);
      return;
    }
    if (it != models_.end()) it->second.loading = false;
    spdlog::info("model '{}' loaded", model);
    if (s) ReplyOk(s, id);
    // Workers started while it loaded (replacements, a bigger pool) load it now.
    for (auto& [slot, w] : workers_) {
      bool pending = false;
      for (const auto& [rid, m] : w->pending_model) pending = pending || m == model;
      if (!w->gone && !pending && w->ready_models.count(model) == 0 && it != models_.end()) {
        LoadInWorker(w.get(), model, it->second.path, [this](const Status&, const std::string&) { Dispatch(); });
      }
    }
    Dispatch();
  };
  if (live.empty()) {
    // No live worker right now: replacements load it when they start.
    models_[*name].loading = false;
    return ReplyOk(s, id);
  }
  for (WorkerHandle* w : live) {
    LoadInWorker(w, *name, *path, [op, finish](const Status& st, const std::string& tb) {
      if (!st.ok() && op->first_error.ok()) {
        op->first_error = st;
        op->traceback = tb;
      }
      if (--op->remaining == 0) finish();
    });
  }
}

void Supervisor::LoadInWorker(WorkerHandle* w, const std::string& name, const std::string& path,
                              std::function<void(const Status&, const std::string&)> done) {
  uint64_t rid = next_request_++;
  Writer m;
  BeginRequest(&m, "load", rid, 2);
  m.Key("name"); m.Str(name);
  m.Key("path"); m.Str(path);
  int slot = w->slot;
  uint64_t gen = w->generation;
  w->pending_model[rid] = name;
  SendRequest(w, rid, m.body(), [this, slot, gen, name, done](const Status& st, const MapView* reply) {
    std::string tb;
    Status result = st;
    if (st.ok() && reply != nullptr) {
      auto ok = reply->Bool("ok");
      if (!ok.ok() || !*ok) result = StatusFromReply(*reply, &tb);
      auto engine = reply->OptStr("engine");
      auto m = models_.find(name);
      if (engine.ok() && engine->has_value() && m != models_.end()) m->second.engine = **engine;
    }
    auto it = workers_.find(slot);
    if (result.ok() && it != workers_.end() && it->second->generation == gen && !it->second->gone) {
      auto m = models_.find(name);
      if (m != models_.end() && !m->second.failed) {
        it->second->ready_models.insert(name);
      } else {  // unloaded or marked failed while this worker was loading it
        SendUnload(it->second.get(), name);
      }
    }
    if (!result.ok() && st.code() == Code::kWorkerCrashed) {
      result = Status(Code::kWorkerCrashed, "model '" + name + "': " + st.message());
    }
    done(result, tb);
  });
}

void Supervisor::HandleUnload(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m) {
  if (!IsAdmin(*s)) {
    spdlog::warn("refused unload from {}: not an administrator", s->Describe());
    return ReplyError(s, id, Status::BadRequest(
                                 "unload refused for uid " + std::to_string(s->uid) + ": only root, shoald's own user" +
                                 (config_.admin_group.empty() ? std::string()
                                                              : " or members of group '" + config_.admin_group + "'") +
                                 " may unload models"));
  }
  auto name = m.Str("name");
  if (!name.ok()) return ReplyError(s, id, name.status());
  // "name:version" unloads that version; a plain name unloads "name" or all "name:*".
  auto op = std::make_shared<UnloadOp>();
  for (auto& [key, entry] : models_) {
    bool match = key == *name || (name->find(':') == std::string::npos && models_.count(*name) == 0 &&
                                  key.rfind(*name + ":", 0) == 0);
    if (match && !entry.draining) op->keys.insert(key);
  }
  if (op->keys.empty()) {
    return ReplyError(s, id, Status(Code::kModelNotFound, "model '" + *name + "' is not loaded (loaded: " +
                                                              Join(models_) + ")"));
  }
  // Jobs it has accepted finish (or, after the grace period, are answered); new ones go
  // elsewhere or are refused.
  for (const auto& key : op->keys) models_[key].draining = true;
  op->client = s;
  op->request_id = id;
  op->grace = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(config_.unload_grace_ms));
  std::weak_ptr<UnloadOp> weak = op;
  op->grace->async_wait([this, weak](const boost::system::error_code& ec) {
    auto op = weak.lock();
    if (ec || !op) return;
    for (auto it = queue_.begin(); it != queue_.end();) {
      if (op->keys.count((*it)->model)) {
        auto job = Dequeue(it);
        FailJob(job, Status(Code::kUnavailable, "model '" + job->model + "' was unloaded; job " +
                                                    std::to_string(job->id) + " did not start within the " +
                                                    std::to_string(config_.unload_grace_ms) + " ms grace period"));
      } else {
        ++it;
      }
    }
    // Running jobs finish first anyway: a worker handles the unload after its job.
    for (auto key : std::set<std::string>(op->keys)) FinishUnload(key);
  });
  unloads_.push_back(op);
  CheckUnloads();
}

void Supervisor::FinishUnload(const std::string& key) {
  models_.erase(key);
  for (auto& [slot, w] : workers_) {
    if (w->gone) continue;
    if (w->ready_models.erase(key) > 0) SendUnload(w.get(), key);
  }
  spdlog::info("model '{}' unloaded", key);
  for (auto it = unloads_.begin(); it != unloads_.end();) {
    auto& op = *it;
    op->keys.erase(key);
    if (op->keys.empty()) {
      op->grace->cancel();
      if (auto c = op->client.lock(); c && !c->closed) ReplyOk(c, op->request_id);
      it = unloads_.erase(it);
    } else {
      ++it;
    }
  }
}

void Supervisor::CheckUnloads() {
  std::vector<std::string> idle;
  for (const auto& [key, entry] : models_) {
    if (!entry.draining || entry.queued > 0) continue;
    bool running = false;
    for (const auto& [slot, w] : workers_) {
      for (const auto& j : w->jobs) running = running || (!w->gone && j && j->model == key);
    }
    if (!running) idle.push_back(key);
  }
  for (const auto& key : idle) FinishUnload(key);
}

Result<std::string> Supervisor::ResolveModel(const std::string& name) const {
  if (auto it = models_.find(name); it != models_.end()) {
    if (it->second.draining) {
      return Status(Code::kModelNotFound, "model '" + name + "' is being unloaded and takes no new jobs");
    }
    return name;
  }
  if (name.find(':') != std::string::npos) {
    return Status(Code::kModelNotFound, "model '" + name + "' is not loaded (loaded: " + Join(models_) + ")");
  }
  // The newest version that serves; while a new version loads, the previous one serves.
  auto newer = [](const std::string& a, const std::string& b) {  // is version a newer than b?
    bool na = !a.empty() && a.find_first_not_of("0123456789") == std::string::npos && a.size() < 19;
    bool nb = !b.empty() && b.find_first_not_of("0123456789") == std::string::npos && b.size() < 19;
    if (na && nb) return std::stoull(a) > std::stoull(b);
    return a > b;
  };
  std::string best, best_loading;
  for (const auto& [key, entry] : models_) {
    if (key.rfind(name + ":", 0) != 0 || entry.draining || entry.failed) continue;
    std::string version = key.substr(name.size() + 1);
    std::string& slot = entry.loading ? best_loading : best;
    if (slot.empty() || newer(version, slot.substr(name.size() + 1))) slot = key;
  }
  if (!best.empty()) return best;
  if (!best_loading.empty()) return best_loading;  // queue until it is ready
  return Status(Code::kModelNotFound, "model '" + name + "' is not loaded (loaded: " + Join(models_) +
                                          "); load it with `shoal load " + name + " ARCHIVE`");
}

bool Supervisor::ModelReady(const std::string& name) const {
  if (auto m = models_.find(name); m == models_.end() || m->second.failed) return false;
  for (const auto& [slot, w] : workers_) {
    if (!w->gone && w->ready_models.count(name) != 0) return true;
  }
  return false;
}

void Supervisor::HandleModels(const std::shared_ptr<ClientSession>& s, uint64_t id) {
  Writer w;
  BeginReply(&w, id, 1);
  PackModels(&w);
  s->channel->Send(w.body());
}

void Supervisor::PackModels(Writer* w) const {
  w->Key("models");
  w->pk().pack_array(static_cast<uint32_t>(models_.size()));
  for (const auto& [name, m] : models_) {
    w->Map(m.failed ? 7 : 6);
    w->Key("name"); w->Str(name);
    w->Key("engine"); w->Str(m.engine);
    w->Key("path"); w->Str(m.path);
    w->Key("ready"); w->Val(ModelReady(name));
    w->Key("queued"); w->Val(static_cast<uint64_t>(m.queued));
    w->Key("failed"); w->Val(m.failed);
    if (m.failed) { w->Key("last_error"); w->Str(m.last_error); }
  }
}

void Supervisor::HandleStatus(const std::shared_ptr<ClientSession>& s, uint64_t id) {
  Writer w;
  BeginReply(&w, id, 11);
  w.Key("pid"); w.Val(static_cast<int64_t>(getpid()));
  w.Key("clients"); w.Val(static_cast<uint64_t>(sessions_.size()));
  w.Key("arenas"); w.Val(static_cast<uint64_t>(arenas_.size()));
  w.Key("zygote"); w.Val(static_cast<int64_t>(zygote_ && !zygote_->gone ? zygote_->pid : -1));
  w.Key("uptime_s");
  w.Val(std::chrono::duration<double>(Clock::now() - started_).count());
  w.Key("queued"); w.Val(static_cast<uint64_t>(queue_.size()));
  w.Key("jobs_done"); w.Val(jobs_done_);
  w.Key("jobs_failed"); w.Val(jobs_failed_);
  w.Key("worker_restarts"); w.Val(worker_restarts_);
  PackModels(&w);
  w.Key("workers");
  w.pk().pack_array(static_cast<uint32_t>(workers_.size()));
  for (const auto& [slot, wk] : workers_) {
    w.Map(7);
    w.Key("slot"); w.Val(slot);
    w.Key("pid"); w.Val(static_cast<int64_t>(wk->pid));
    int running = wk->Running();
    w.Key("state");
    w.Str(wk->gone ? "restarting" : running == 0 ? "idle" : running < static_cast<int>(wk->jobs.size()) ? "partly busy" : "busy");
    w.Key("interpreters");  // what each interpreter runs
    w.pk().pack_array(static_cast<uint32_t>(wk->jobs.size()));
    for (size_t i = 0; i < wk->jobs.size(); ++i) {
      const auto& job = wk->jobs[i];
      w.Map(3);
      w.Key("index"); w.Val(static_cast<uint64_t>(i));
      w.Key("state"); w.Str(wk->gone ? "restarting" : job ? "busy" : "idle");
      w.Key("job");
      if (job) {
        w.Map(2);
        w.Key("id"); w.Val(job->id);
        w.Key("model"); w.Str(job->model);
      } else {
        w.pk().pack_nil();
      }
    }
    w.Key("models");
    w.Val(std::vector<std::string>(wk->ready_models.begin(), wk->ready_models.end()));
    auto mem = wk->gone ? ProcessMemory{} : ReadProcessMemory(wk->pid);
    w.Key("rss_kb"); w.Val(mem.rss_kb);
    w.Key("pss_kb"); w.Val(mem.pss_kb);
  }
  s->channel->Send(w.body());
}

Status Supervisor::HandleInfer(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m) {
  if (stopping_) return Status(Code::kUnavailable, "shoald is shutting down; retry on another instance");
  auto requested = m.Str("model");
  if (!requested.ok()) return requested.status();
  auto model = ResolveModel(*requested);
  if (!model.ok()) return model.status();
  auto inputs = m.Array("inputs");
  if (!inputs.ok()) return inputs.status();
  const auto& arr = (*inputs)->via.array;
  if (arr.size > 256) return Status::BadRequest("too many inputs (" + std::to_string(arr.size) + ", at most 256)");
  auto job = std::make_shared<Job>();
  for (uint32_t i = 0; i < arr.size; ++i) {
    auto d = Descriptor::Parse(arr.ptr[i]);
    if (!d.ok()) return Status::BadRequest("input " + std::to_string(i) + ": " + d.status().message());
    auto a = arenas_.find(d->arena);
    if (a == arenas_.end() || a->second.owner != s->id) {
      return Status::BadRequest("input " + std::to_string(i) + ": arena " + std::to_string(d->arena) +
                                " is not registered on this connection");
    }
    if (auto st = d->CheckBounds(a->second.size); !st.ok()) {
      return Status::BadRequest("input " + std::to_string(i) + ": " + st.message());
    }
    job->inputs.push_back(std::move(*d));
  }
  auto timeout = m.OptUint("timeout_ms");
  if (!timeout.ok()) return timeout.status();
  auto retries = m.OptUint("retries");
  if (!retries.ok()) return retries.status();
  if (retries->value_or(0) > 1) {
    return Status::BadRequest("retries must be 0 or 1: a job that crashed a worker is re-run at most once");
  }
  if (!job->inputs.empty()) {
    job->out_arena = job->inputs[0].arena;
  } else if (!s->arenas.empty()) {
    job->out_arena = *s->arenas.begin();
  } else {
    return Status::BadRequest("register an arena before inferring: outputs are written into it");
  }
  ModelEntry& entry = models_[*model];
  if (entry.failed) {
    return Status(Code::kUnavailable, "model '" + *model + "' is marked failed: " + entry.last_error +
                                          "; fix it and load it again (shoal unload/load)");
  }
  if (entry.queued >= config_.max_queue) {
    // A hint: the time the slots need to work through the queue ahead, at least 1 ms.
    size_t slots = 0;
    for (const auto& [slot, w] : workers_) slots += (!w->gone && w->ready_models.count(*model)) ? 1 : 0;
    double per_job = entry.avg_ms > 0 ? entry.avg_ms : 1.0;
    auto retry_ms = static_cast<uint64_t>(std::max(1.0, per_job * entry.queued / std::max<size_t>(slots, 1)));
    s->channel->Send(ErrorReply(id, Status(Code::kOverloaded, "model '" + *model + "' has " +
                                                                  std::to_string(entry.queued) +
                                                                  " jobs queued (max_queue); retry in about " +
                                                                  std::to_string(retry_ms) + " ms"),
                                {}, retry_ms));
    return Status::Ok();
  }
  job->retries = static_cast<int>(retries->value_or(0));
  job->id = next_request_++;
  job->request_id = id;
  job->client = s;
  job->model = *model;
  job->accepted = Clock::now();
  uint64_t ms = timeout->value_or(config_.default_timeout_ms);
  if (ms > 0) {
    job->deadline = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(ms));
    std::weak_ptr<Job> weak = job;
    job->deadline->async_wait([this, weak](const boost::system::error_code& ec) {
      auto j = weak.lock();
      if (!ec && j) OnDeadline(j);
    });
  }
  Enqueue(job, false);
  Dispatch();
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------
// jobs

void Supervisor::Enqueue(const std::shared_ptr<Job>& job, bool front) {
  if (front) {
    queue_.push_front(job);
  } else {
    queue_.push_back(job);
  }
  if (auto m = models_.find(job->model); m != models_.end()) ++m->second.queued;
}

std::shared_ptr<Job> Supervisor::Dequeue(std::deque<std::shared_ptr<Job>>::iterator& it) {
  auto job = *it;
  it = queue_.erase(it);  // erasing from a deque invalidates every iterator but the one returned
  if (auto m = models_.find(job->model); m != models_.end() && m->second.queued > 0) --m->second.queued;
  return job;
}

void Supervisor::Dispatch() {
  if (stopping_) {
    for (const auto& [slot, w] : workers_) {
      if (!w->gone && w->Running() > 0) return;  // still draining
    }
    return FinishShutdown();
  }
  if (!unloads_.empty()) CheckUnloads();
  // Jobs in queue order; each to a free interpreter of a worker that serves its model,
  // preferring one that ran that model last (its code and weights are warm in that
  // interpreter's caches), then the least busy worker.
  for (auto it = queue_.begin(); it != queue_.end();) {
    WorkerHandle* best = nullptr;
    int best_interp = -1;
    bool best_warm = false;
    bool any_free = false;
    for (auto& [slot, w] : workers_) {
      if (w->gone || w->retiring) continue;
      int i = w->FreeInterpreter((*it)->model);
      if (i < 0) continue;
      any_free = true;
      if (w->ready_models.count((*it)->model) == 0) continue;
      bool warm = w->last_model[static_cast<size_t>(i)] == (*it)->model;
      if (best == nullptr || (warm && !best_warm) || (warm == best_warm && w->Running() < best->Running())) {
        best = w.get();
        best_interp = i;
        best_warm = warm;
      }
    }
    if (!any_free) return;  // every interpreter is busy
    if (best == nullptr) {
      ++it;  // its model serves nowhere free yet
      continue;
    }
    RunOn(best, best_interp, Dequeue(it));
  }
}

void Supervisor::SendArenaIfNeeded(WorkerHandle* w, uint64_t arena) {
  if (w->arenas.count(arena) != 0) return;
  auto a = arenas_.find(arena);
  if (a == arenas_.end()) return;
  Writer m;
  BeginNotice(&m, "arena", 1);
  m.Key("arena"); m.Val(arena);
  w->channel->Send(m.body(), {a->second.fd});
  w->arenas.insert(arena);
}

void Supervisor::RunOn(WorkerHandle* w, int interp, const std::shared_ptr<Job>& job) {
  for (const auto& d : job->inputs) SendArenaIfNeeded(w, d.arena);
  SendArenaIfNeeded(w, job->out_arena);
  w->jobs[static_cast<size_t>(interp)] = job;
  w->last_model[static_cast<size_t>(interp)] = job->model;
  job->worker_slot = w->slot;
  job->interp = interp;
  job->started = Clock::now();
  w->pending_model[job->id] = job->model;
  Writer m;
  BeginRequest(&m, "infer", job->id, 4);
  m.Key("interp"); m.Val(static_cast<uint64_t>(interp));
  m.Key("model"); m.Str(job->model);
  m.Key("out_arena"); m.Val(job->out_arena);
  m.Key("inputs");
  m.pk().pack_array(static_cast<uint32_t>(job->inputs.size()));
  for (const auto& d : job->inputs) d.Pack(&m);
  int slot = w->slot;
  SendRequest(w, job->id, m.body(), [this, slot, job](const Status& st, const MapView* reply) {
    auto it = workers_.find(slot);
    OnJobReply(it == workers_.end() ? nullptr : it->second.get(), job, st, reply);
  });
}

Status Supervisor::CheckOutputs(const msgpack::object& tree, const Job& job, int depth,
                                std::vector<uint64_t>* blocks) const {
  if (depth > 16) return Status::Internal("output structure nested too deeply");
  if (tree.type != msgpack::type::MAP || tree.via.map.size != 1) {
    return Status::Internal("worker sent a malformed output tree");
  }
  const auto& kv = tree.via.map.ptr[0];
  if (kv.key.type != msgpack::type::STR) return Status::Internal("worker sent a malformed output tree");
  std::string_view kind(kv.key.via.str.ptr, kv.key.via.str.size);
  if (kind == "tensor") {
    auto d = Descriptor::Parse(kv.val);
    if (!d.ok()) return Status::Internal("worker sent a bad output descriptor: " + d.status().message());
    auto a = arenas_.find(d->arena);
    if (d->arena != job.out_arena && (a == arenas_.end() || !job.client.lock() ||
                                      a->second.owner != job.client.lock()->id)) {
      return Status::Internal("worker returned a tensor in a foreign arena");
    }
    if (a == arenas_.end()) return Status::Internal("output arena vanished");
    if (auto st = d->CheckBounds(a->second.size); !st.ok()) return Status::Internal(st.message());
    auto extent = d->Extent();
    if (extent.ok() && *extent > 0) blocks->push_back(d->block);
    return Status::Ok();
  }
  if (kind == "tuple" || kind == "list") {
    if (kv.val.type != msgpack::type::ARRAY) return Status::Internal("malformed output sequence");
    for (uint32_t i = 0; i < kv.val.via.array.size; ++i) {
      if (auto st = CheckOutputs(kv.val.via.array.ptr[i], job, depth + 1, blocks); !st.ok()) return st;
    }
    return Status::Ok();
  }
  if (kind == "dict") {
    if (kv.val.type != msgpack::type::ARRAY) return Status::Internal("malformed output dict");
    for (uint32_t i = 0; i < kv.val.via.array.size; ++i) {
      const auto& pair = kv.val.via.array.ptr[i];
      if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2) {
        return Status::Internal("malformed output dict entry");
      }
      if (auto st = CheckOutputs(pair.via.array.ptr[1], job, depth + 1, blocks); !st.ok()) return st;
    }
    return Status::Ok();
  }
  if (kind == "value" || kind == "float") return Status::Ok();
  return Status::Internal("unknown output node '" + std::string(kind) + "'");
}

void Supervisor::OnJobReply(WorkerHandle* w, const std::shared_ptr<Job>& job, const Status& st,
                            const MapView* reply) {
  if (w != nullptr && job->interp >= 0 && w->jobs[static_cast<size_t>(job->interp)] == job) {
    w->jobs[static_cast<size_t>(job->interp)].reset();
    if (w->kill_timer) w->kill_timer->cancel();
    ++w->jobs_run;
    if (config_.max_jobs_per_worker > 0 && w->jobs_run >= config_.max_jobs_per_worker && !w->retiring) {
      w->retiring = true;  // recycled once this reply is through (RetireIfDone)
      spdlog::info("{} ran {} jobs: recycling it", w->Describe(), w->jobs_run);
    }
  }
  if (!st.ok()) {
    // The worker died under it. Re-run it only if the client asked for that, and never a
    // job that has now crashed two workers.
    if (!job->answered && ++job->crashes < 2 && job->retries > 0 && !stopping_) {
      --job->retries;
      spdlog::warn("job {} of model '{}' crashed its worker; re-running it once as the client asked", job->id,
                   job->model);
      Enqueue(job, true);
    } else {
      FailJob(job, job->crashes >= 2 ? Status(st.code(), st.message() + " (it crashed a worker before too)") : st);
    }
    Dispatch();
    return;
  }
  if (auto m = models_.find(job->model); m != models_.end()) {
    double ms = std::chrono::duration<double, std::milli>(Clock::now() - job->started).count();
    m->second.avg_ms = m->second.avg_ms == 0 ? ms : 0.9 * m->second.avg_ms + 0.1 * ms;
  }
  auto ok = reply->Bool("ok");
  std::vector<uint64_t> blocks;
  const msgpack::object* outputs = ok.ok() && *ok ? reply->Find("outputs") : nullptr;
  Status check = Status::Ok();
  if (outputs != nullptr) check = CheckOutputs(*outputs, *job, 0, &blocks);
  if (job->answered && !blocks.empty() && w != nullptr && !w->gone && arenas_.count(job->out_arena)) {
    // Nobody will read these outputs (the job timed out): give the blocks back.
    Writer f;
    BeginNotice(&f, "free", 2);
    f.Key("arena"); f.Val(job->out_arena);
    f.Key("blocks"); f.Val(blocks);
    w->channel->Send(f.body());
  }
  if (!ok.ok() || !*ok) {
    std::string tb;
    Status err = StatusFromReply(*reply, &tb);
    FailJob(job, err, tb);
  } else if (outputs == nullptr) {
    FailJob(job, Status::Internal("worker reply without outputs for job " + std::to_string(job->id)));
  } else if (!check.ok()) {
    FailJob(job, Status::Internal("job " + std::to_string(job->id) + " of model '" + job->model +
                                  "': " + check.message()));
  } else if (!job->answered) {
    Writer r;
    BeginReply(&r, job->request_id, 2);
    r.Key("job"); r.Val(job->id);
    r.Key("outputs"); r.pk().pack(*outputs);
    AnswerJob(job, r.body());
    ++jobs_done_;
  }
  Dispatch();
}

void Supervisor::AnswerJob(const std::shared_ptr<Job>& job, std::string_view body) {
  if (job->answered) return;
  job->answered = true;
  if (job->deadline) job->deadline->cancel();
  if (auto s = job->client.lock(); s && !s->closed) s->channel->Send(body);
}

void Supervisor::FailJob(const std::shared_ptr<Job>& job, const Status& st, std::string_view traceback) {
  if (job->answered) return;
  ++jobs_failed_;
  AnswerJob(job, ErrorReply(job->request_id, st, traceback));
}

void Supervisor::OnDeadline(const std::shared_ptr<Job>& job) {
  if (job->answered) return;
  auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - job->accepted).count();
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (*it == job) {
      Dequeue(it);
      return FailJob(job, Status(Code::kTimeout, "job " + std::to_string(job->id) + " of model '" + job->model +
                                                     "' waited " + std::to_string(waited) +
                                                     " ms in the queue and passed its deadline"));
    }
  }
  FailJob(job, Status(Code::kTimeout, "job " + std::to_string(job->id) + " of model '" + job->model +
                                          "' passed its deadline after " + std::to_string(waited) +
                                          " ms while running; its worker is given " +
                                          std::to_string(config_.kill_grace_ms) + " ms before it is killed"));
  auto it = workers_.find(job->worker_slot);
  auto running = [job](const WorkerHandle& w) {
    return job->interp >= 0 && w.jobs[static_cast<size_t>(job->interp)] == job;
  };
  if (it == workers_.end() || it->second->gone || !running(*it->second)) return;
  // The grace period is the job's own (its deadline timer, re-armed): with K interpreters
  // several jobs of one worker may be past their deadlines, and each must still get its
  // worker killed if it never returns.
  uint64_t gen = it->second->generation;
  int slot = it->second->slot;
  job->deadline->expires_after(std::chrono::milliseconds(config_.kill_grace_ms));
  job->deadline->async_wait([this, gen, slot, job, running](const boost::system::error_code& ec) {
    if (ec) return;
    auto it = workers_.find(slot);
    if (it == workers_.end() || it->second->generation != gen || it->second->gone || !running(*it->second)) return;
    TerminateWorker(it->second.get(), "still runs timed-out job " + std::to_string(job->id));
  });
}

void Supervisor::TerminateWorker(WorkerHandle* w, const std::string& why) {
  if (w->gone || w->pid <= 0) return;
  spdlog::warn("{} {}: SIGTERM, then SIGKILL after 500 ms", w->Describe(), why);
  kill(w->pid, SIGTERM);
  w->kill_timer = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(500));
  pid_t pid = w->pid;
  uint64_t gen = w->generation;
  int slot = w->slot;
  w->kill_timer->async_wait([this, pid, gen, slot](const boost::system::error_code& ec) {
    auto it = workers_.find(slot);
    if (ec || it == workers_.end() || it->second->generation != gen || it->second->gone) return;
    kill(pid, SIGKILL);
  });
}

// ---------------------------------------------------------------------------------------
// workers

std::vector<std::string> Supervisor::WorkerArgs() const {
  std::vector<std::string> args;
  if (config_.interpreters > 1) {
    args = {"--interpreters", std::to_string(config_.interpreters), "--interpreter-cache", config_.interpreter_cache};
  }
  for (auto& a : config_.sandbox.ToArgs()) args.push_back(a);
  return args;
}

Status Supervisor::CheckInterpreters() {
  int k = config_.interpreters;
  auto run = RunProcess({config_.worker_binary, "--check-interpreters", std::to_string(k), "--interpreter-cache",
                         config_.interpreter_cache},
                        300);
  if (!run.ok()) return run.status();
  std::string versions = run->out.substr(0, run->out.find('\n'));
  if (run->succeeded()) {
    spdlog::info("{} interpreters per worker ({}); private library copies in {}", k, versions,
                 config_.interpreter_cache);
    return Status::Ok();
  }
  // The last lines of what it printed say why (libtorch's own warnings come first).
  std::string err = run->err;
  size_t cut = err.size();
  for (int lines = 0; cut > 0 && lines < 12; ++lines) cut = err.rfind('\n', cut - 1);
  if (cut != std::string::npos && cut > 0) err = "..." + err.substr(cut);
  return Status(Code::kUnavailable,
                "--interpreters " + std::to_string(k) + " is not supported here (" +
                    (versions.empty() ? std::string("torch version unknown") : versions) +
                    "): two interpreters in one worker failed the start-up check (" + run->Describe() + ")" +
                    (err.empty() ? std::string() : ":\n" + err) +
                    "\nRun with --interpreters 1 (the default, works with any torch), or more --workers.");
}

void Supervisor::StartZygote() {
  std::vector<std::string> args = {"--zygote", "--supervisor", std::to_string(getpid())};
  for (auto& a : WorkerArgs()) args.push_back(a);
  auto proc = SpawnWorkerProcess(config_.worker_binary, args);
  if (!proc.ok()) {
    spdlog::error("cannot start the zygote: {}; workers are started one by one", proc.status().ToString());
    return;
  }
  zygote_ = std::make_unique<ZygoteHandle>();
  zygote_->pid = proc->pid;
  zygote_->started = Clock::now();
  zygote_->channel = std::make_shared<AsyncChannel>(io_, proc->sock);
  ZygoteHandle* z = zygote_.get();
  z->channel->Start(
      [this, z](std::string body, std::vector<int>* fds) {
        CloseAll(fds);
        if (zygote_.get() != z) return;
        auto oh = Decode(body);
        if (!oh.ok()) return;
        MapView m(oh->get());
        auto id = m.Uint("id");
        const msgpack::object* pid = m.Find("pid");
        if (!id.ok() || pid == nullptr) return;
        auto it = z->pending.find(*id);
        if (it == z->pending.end()) return;
        auto fn = std::move(it->second);
        z->pending.erase(it);
        fn(pid->type == msgpack::type::POSITIVE_INTEGER ? static_cast<pid_t>(pid->via.u64) : -1);
      },
      [this, z](const Status&) {
        if (zygote_.get() != z || z->gone) return;
        kill(z->pid, SIGKILL);
        int status = 0;
        pid_t r;
        do {
          r = waitpid(z->pid, &status, 0);
        } while (r < 0 && errno == EINTR);
        OnZygoteGone(r == z->pid ? DescribeWaitStatus(status) : "closed its socket");
      });
  spdlog::info("started the zygote (pid {})", z->pid);
}

void Supervisor::OnZygoteGone(const std::string& how) {
  ZygoteHandle* z = zygote_.get();
  if (z == nullptr || z->gone) return;
  z->gone = true;
  z->channel->Close();
  spdlog::error("the zygote (pid {}) died: {}; workers are started one by one until it is back", z->pid, how);
  // Workers it was forking may or may not exist; without their pids they cannot be
  // supervised: hang up on them (a worker exits on EOF) and start them anew.
  auto pending = std::move(z->pending);
  for (auto& [id, fn] : pending) fn(-1);
  if (stopping_) return;
  bool young = Clock::now() - z->started < std::chrono::seconds(10);
  zygote_streak_ = young ? zygote_streak_ + 1 : 0;
  auto t = std::make_shared<asio::steady_timer>(
      io_, std::chrono::milliseconds(std::min(1000 << std::min(zygote_streak_, 5), 30000)));
  t->async_wait([this, t](const boost::system::error_code& ec) {
    if (!ec && !stopping_) StartZygote();
  });
}

void Supervisor::SpawnWorker(int slot) {
  static uint64_t generation = 0;
  auto w = std::make_unique<WorkerHandle>();
  w->slot = slot;
  w->jobs.resize(static_cast<size_t>(config_.interpreters));
  w->last_model.resize(static_cast<size_t>(config_.interpreters));
  w->started = Clock::now();
  w->generation = ++generation;
  uint64_t gen = w->generation;
  int sock = -1;
  if (zygote_ && !zygote_->gone) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      spdlog::error("socketpair for worker {}: {}", slot, std::strerror(errno));
      return ScheduleRespawn(slot, std::chrono::milliseconds(1000));
    }
    sock = sv[0];
    uint64_t rid = next_request_++;
    Writer m;
    BeginRequest(&m, "fork", rid, 1);
    m.Key("slot"); m.Val(slot);
    zygote_->pending[rid] = [this, slot, gen](pid_t pid) {
      auto it = workers_.find(slot);
      bool current = it != workers_.end() && it->second->generation == gen && !it->second->gone;
      if (!current) {
        if (pid > 0) kill(pid, SIGKILL);  // its slot moved on; the reaper collects it
        return;
      }
      WorkerHandle* w = it->second.get();
      if (pid <= 0) {
        w->channel->Close();
        return OnWorkerGone(w, "no process (the zygote could not fork it)");
      }
      w->pid = pid;
      spdlog::info("worker {} forked by the zygote (pid {}) in {:.1f} ms", slot, pid,
                   std::chrono::duration<double, std::milli>(Clock::now() - w->started).count());
    };
    zygote_->channel->Send(m.body(), {std::make_shared<OwnedFd>(sv[1])});
  } else {
    std::vector<std::string> args = {"--slot", std::to_string(slot)};
    for (auto& a : WorkerArgs()) args.push_back(a);
    auto proc = SpawnWorkerProcess(config_.worker_binary, args);
    if (!proc.ok()) {
      spdlog::error("cannot start worker {}: {}", slot, proc.status().ToString());
      return ScheduleRespawn(slot, std::chrono::milliseconds(1000));
    }
    w->pid = proc->pid;
    sock = proc->sock;
    spdlog::info("started worker {} (pid {})", slot, w->pid);
  }
  w->channel = std::make_shared<AsyncChannel>(io_, sock);
  WorkerHandle* raw = w.get();
  workers_[slot] = std::move(w);
  raw->channel->Start(
      [this, slot, gen](std::string body, std::vector<int>* fds) {
        auto it = workers_.find(slot);
        CloseAll(fds);  // workers never send fds
        if (it != workers_.end() && it->second->generation == gen) OnWorkerFrame(it->second.get(), std::move(body));
      },
      [this, slot, gen](const Status& why) {
        auto it = workers_.find(slot);
        if (it == workers_.end() || it->second->generation != gen || it->second->gone) return;
        WorkerHandle* w = it->second.get();
        // EOF: the process is exiting or exited. Make sure it is gone, then learn how it died.
        if (why.code() != Code::kUnavailable) spdlog::warn("{}: {}", w->Describe(), why.ToString());
        if (w->pid <= 0) return OnWorkerGone(w, "exit before it was started (the zygote died)");
        kill(w->pid, SIGKILL);
        int status = 0;
        pid_t r;
        do {
          r = waitpid(w->pid, &status, 0);
        } while (r < 0 && errno == EINTR);
        OnWorkerGone(w, r == w->pid ? DescribeWaitStatus(status) : "closed its socket");
      });
  auto startup = std::make_shared<int>(0);  // start-up loads still running
  for (const auto& [name, m] : models_) {
    if (!m.loading && !m.failed) ++*startup;
  }
  auto started_all = [this, slot, gen]() {
    auto it = workers_.find(slot);
    if (it == workers_.end() || it->second->generation != gen || it->second->gone) return;
    it->second->ready = true;
    spdlog::info("{} serves {} models, {:.1f} ms after it was asked for", it->second->Describe(),
                 it->second->ready_models.size(),
                 std::chrono::duration<double, std::milli>(Clock::now() - it->second->started).count());
  };
  if (*startup == 0) started_all();
  for (const auto& [name, m] : models_) {
    if (m.loading || m.failed) continue;  // a pending client load() covers workers alive at its start
    std::string model = name;
    LoadInWorker(raw, name, m.path, [this, model, slot, startup, started_all](const Status& st, const std::string& tb) {
      if (--*startup == 0) started_all();
      if (!st.ok()) {
        spdlog::error("worker {} could not load model '{}': {}{}", slot, model, st.ToString(),
                      tb.empty() ? "" : "\n" + tb);
        if (!ready_sent_ && st.code() != Code::kWorkerCrashed && !stopping_) {
          // A configured model that cannot load is a start-up failure, not something to retry.
          notifier_.Notify("STATUS=model '" + model + "' failed to load: " + st.message());
          spdlog::critical("configured model '{}' cannot be loaded; stopping", model);
          exit_code_ = 1;
          Shutdown();
          return;
        }
      }
      CheckReady();
      Dispatch();
    });
  }
}

void Supervisor::ScheduleRespawn(int slot, std::chrono::milliseconds delay) {
  if (stopping_) return;
  if (delay.count() == 0) return SpawnWorker(slot);
  auto t = std::make_shared<asio::steady_timer>(io_, delay);
  t->async_wait([this, slot, t](const boost::system::error_code& ec) {
    if (!ec && !stopping_) SpawnWorker(slot);
  });
}

void Supervisor::SendUnload(WorkerHandle* w, const std::string& model) {
  uint64_t rid = next_request_++;
  Writer u;
  BeginRequest(&u, "unload", rid, 1);
  u.Key("name"); u.Str(model);
  SendRequest(w, rid, u.body(), [](const Status&, const MapView*) {});
}

void Supervisor::SendRequest(WorkerHandle* w, uint64_t id, std::string_view body, WorkerHandle::ReplyFn fn) {
  w->pending[id] = std::move(fn);
  w->channel->Send(body);
}

void Supervisor::OnWorkerFrame(WorkerHandle* w, std::string body) {
  auto oh = Decode(body);
  if (!oh.ok()) {
    spdlog::error("{} sent an undecodable message: {}", w->Describe(), oh.status().ToString());
    if (w->pid > 0) kill(w->pid, SIGKILL);
    return;
  }
  MapView m(oh->get());
  auto id = m.Uint("id");
  if (!id.ok()) {
    spdlog::error("{} sent a message without id", w->Describe());
    return;
  }
  auto it = w->pending.find(*id);
  if (it == w->pending.end()) {
    spdlog::warn("{} answered unknown request {}", w->Describe(), *id);
    return;
  }
  auto fn = std::move(it->second);
  w->pending.erase(it);
  w->pending_model.erase(*id);
  fn(Status::Ok(), &m);
  RetireIfDone(w);
}

void Supervisor::OnWorkerGone(WorkerHandle* w, const std::string& how) {
  if (w->gone) return;
  w->gone = true;
  w->channel->Close();
  if (w->kill_timer) w->kill_timer->cancel();
  // Which interpreter crashed is not known from outside: every model with a job or a
  // load in flight on the worker counts the crash (with K = 1, the one that crashed it).
  std::set<std::string> culprits;
  for (const auto& [rid, model] : w->pending_model) culprits.insert(model);
  w->pending_model.clear();
  ++worker_restarts_;
  std::string job_part;
  for (const auto& j : w->jobs) {
    if (j) job_part += (job_part.empty() ? " while running job " : ", job ") + std::to_string(j->id) + " of model '" + j->model + "'";
  }
  spdlog::error("{} died: {}{}", w->Describe(), how, job_part);
  // Answer everything it owed, in request order; the callbacks may touch workers_.
  auto pending = std::move(w->pending);
  w->pending.clear();
  auto jobs = std::move(w->jobs);
  w->jobs.assign(jobs.size(), nullptr);
  w->ready_models.clear();
  w->arenas.clear();
  std::string who = "worker " + std::to_string(w->slot) + " (pid " + std::to_string(w->pid) + ")";
  for (auto& [rid, fn] : pending) {
    std::shared_ptr<Job> job;
    for (const auto& j : jobs) {
      if (j && j->id == rid) job = j;
    }
    std::string what =
        !job ? who + " died from " + how + " before answering"
             : who + " died from " + how + " while running job " + std::to_string(rid) + " of model '" + job->model +
                   "'" +
                   (jobs.size() > 1 ? " on interpreter " + std::to_string(job->interp) + " of " +
                                          std::to_string(jobs.size()) + " (any of them may have crashed it)"
                                    : std::string()) +
                   "; the worker is being replaced and the job was not retried";
    fn(Status(Code::kWorkerCrashed, what), nullptr);
  }
  for (const auto& c : culprits) RecordCrash(c, how);
  if (stopping_) {
    Dispatch();  // may finish the drain
    return;
  }
  if (w->slot >= config_.workers) return;  // the pool shrank: no replacement
  // A worker that dies while starting (loading its models) is replaced with capped
  // exponential backoff; one that dies running a job is replaced at once (a model whose
  // jobs keep crashing workers is cut off by RecordCrash instead).
  int slot = w->slot;
  int streak = !w->ready ? ++crash_streak_[slot] : (crash_streak_[slot] = 0);
  auto delay = std::chrono::milliseconds(streak <= 1 ? 0 : std::min(100 << std::min(streak - 2, 6), 5000));
  ScheduleRespawn(slot, delay);
}

void Supervisor::ReapChildren() {
  for (;;) {
    int status = 0;
    pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid <= 0) return;
    if (zygote_ && zygote_->pid == pid && !zygote_->gone) {
      OnZygoteGone(DescribeWaitStatus(status));
      continue;
    }
    for (auto& [slot, w] : workers_) {
      if (w->pid == pid && !w->gone) {
        OnWorkerGone(w.get(), DescribeWaitStatus(status));
        break;
      }
    }
  }
}

void Supervisor::OnSignal(int sig) {
  if (sig == SIGCHLD) {
    ReapChildren();
  } else if (sig == SIGHUP) {
    Reload();
  } else if (sig == SIGTERM || sig == SIGINT) {
    spdlog::info("received {}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    Shutdown();
    return;
  }
  signals_.async_wait([this](const boost::system::error_code& ec, int s) {
    if (!ec) OnSignal(s);
  });
}

void Supervisor::Shutdown() {
  if (stopping_) return;
  stopping_ = true;
  notifier_.Notify("STOPPING=1\nSTATUS=draining: finishing running jobs");
  boost::system::error_code ec;
  if (acceptor_) acceptor_->close(ec);
  if (config_.listen_fd < 0) {
    std::error_code fec;
    std::filesystem::remove(config_.socket_path, fec);
  }
  for (auto job : queue_) {
    FailJob(job, Status(Code::kUnavailable, "shoald is shutting down; job " + std::to_string(job->id) +
                                                " of model '" + job->model + "' was not started"));
  }
  queue_.clear();
  for (auto& [name, m] : models_) m.queued = 0;
  drain_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(config_.drain_grace_ms));
  drain_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (!ec) FinishShutdown();
  });
  Dispatch();  // finishes at once when nothing is running
}

void Supervisor::FinishShutdown() {
  if (finished_) return;
  finished_ = true;
  if (drain_timer_) drain_timer_->cancel();
  if (watchdog_timer_) watchdog_timer_->cancel();
  for (auto& [slot, w] : workers_) {
    if (w->gone) continue;
    for (const auto& job : w->jobs) {
      if (!job) continue;
      FailJob(job, Status(Code::kUnavailable, "shoald stopped before job " + std::to_string(job->id) +
                                                  " of model '" + job->model + "' finished"));
    }
    // Loads still in flight are answered too: nobody is left waiting.
    auto pending = std::move(w->pending);
    w->pending.clear();
    for (auto& [rid, fn] : pending) {
      fn(Status(Code::kUnavailable, "shoald stopped before " + w->Describe() + " answered"), nullptr);
    }
    w->gone = true;
    if (w->pid > 0) {
      kill(w->pid, SIGKILL);
      waitpid(w->pid, nullptr, 0);
    }
    w->channel->Close();
  }
  if (zygote_ && !zygote_->gone) {
    zygote_->gone = true;
    kill(zygote_->pid, SIGKILL);
    waitpid(zygote_->pid, nullptr, 0);
    zygote_->channel->Close();
  }
  if (config_.interpreters > 1) {
    // The copies are reused by replacement workers and after a crash of shoald, never
    // left behind by a clean stop.
    std::error_code ec;
    std::filesystem::remove_all(config_.interpreter_cache, ec);
    if (ec) spdlog::warn("cannot remove {}: {}", config_.interpreter_cache, ec.message());
  }
  // Let queued replies reach clients, then stop.
  auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(50));
  t->async_wait([this, t](const boost::system::error_code&) {
    for (auto& [id, s] : sessions_) s->channel->Close();
    signals_.cancel();
    io_.stop();
  });
}


void Supervisor::HandleHealth(const std::shared_ptr<ClientSession>& s, uint64_t id) {
  bool all_ready = !stopping_;
  for (const auto& [name, m] : models_) all_ready = all_ready && ModelReady(name);
  Writer w;
  BeginReply(&w, id, 4);
  w.Key("live"); w.Val(true);  // answering at all is liveness
  w.Key("ready"); w.Val(all_ready);
  w.Key("stopping"); w.Val(stopping_);
  w.Key("models");
  w.pk().pack_map(static_cast<uint32_t>(models_.size()));
  for (const auto& [name, m] : models_) {
    w.Key(name);
    w.Val(ModelReady(name));
  }
  s->channel->Send(w.body());
}

void Supervisor::RecordCrash(const std::string& model, const std::string& how) {
  auto it = models_.find(model);
  if (it == models_.end() || it->second.failed) return;
  ModelEntry& m = it->second;
  auto now = Clock::now();
  m.crashes.push_back(now);
  while (!m.crashes.empty() && now - m.crashes.front() > std::chrono::seconds(config_.crash_window_s)) {
    m.crashes.pop_front();
  }
  m.last_error = "its worker died from " + how;
  if (static_cast<int>(m.crashes.size()) < config_.crash_loop_limit) return;
  m.failed = true;
  m.last_error = "it crashed " + std::to_string(m.crashes.size()) + " workers within " +
                 std::to_string(config_.crash_window_s) + " s (last: " + how + ")";
  spdlog::error("model '{}' is marked failed: {}", model, m.last_error);
  notifier_.Notify("STATUS=model '" + model + "' failed: " + m.last_error);
  for (auto q = queue_.begin(); q != queue_.end();) {
    if ((*q)->model == model) {
      auto job = Dequeue(q);
      FailJob(job, Status(Code::kUnavailable, "model '" + model + "' is marked failed: " + m.last_error));
    } else {
      ++q;
    }
  }
  for (auto& [slot, w] : workers_) {
    if (w->gone || w->ready_models.erase(model) == 0) continue;
    SendUnload(w.get(), model);
  }
}

void Supervisor::RetireIfDone(WorkerHandle* w) {
  if (!w->retiring || w->gone || w->Running() > 0 || !w->pending.empty()) return;
  int slot = w->slot;
  spdlog::info("{} retired", w->Describe());
  w->gone = true;
  w->channel->Close();  // the worker exits on EOF; the reaper collects it
  workers_.erase(slot);
  if (slot < config_.workers && !stopping_) SpawnWorker(slot);
  Dispatch();
}

void Supervisor::ResizePool() {
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
    if (it->first >= config_.workers && it->second->gone) {
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
  for (int slot = 0; slot < config_.workers; ++slot) {
    if (workers_.count(slot) == 0) SpawnWorker(slot);
  }
}

void Supervisor::Reload() {
  if (config_.config_path.empty()) {
    spdlog::warn("SIGHUP: shoald was started without --config; nothing to reload");
    return;
  }
  notifier_.Notify("RELOADING=1\nSTATUS=reloading " + config_.config_path);
  // The file again with the command line's overrides on top; restart-only settings as they run.
  auto reloaded = ReloadConfig(config_);
  if (!reloaded.ok()) {
    spdlog::error("SIGHUP: keeping the current configuration: {}", reloaded.status().message());
    notifier_.Notify("READY=1\nSTATUS=reload failed: " + reloaded.status().message());
    return;
  }
  SupervisorConfig& fresh = reloaded->config;
  gid_t admin_gid = static_cast<gid_t>(-1);
  if (!fresh.admin_group.empty()) {
    struct group* g = getgrnam(fresh.admin_group.c_str());
    if (g == nullptr) {
      spdlog::error("SIGHUP: keeping the current configuration: admin_group '{}' does not exist", fresh.admin_group);
      notifier_.Notify("READY=1\nSTATUS=reload failed: unknown admin_group");
      return;
    }
    admin_gid = g->gr_gid;
  }
  bool sandbox_changed = fresh.sandbox.ToArgs() != config_.sandbox.ToArgs();
  for (const auto& setting : reloaded->needs_restart) {
    spdlog::warn("SIGHUP: {} takes effect only when shoald restarts", setting);
  }
  config_ = std::move(fresh);
  admin_gid_ = admin_gid;
  spdlog::set_level(spdlog::level::from_str(config_.log_level));
  if (sandbox_changed && zygote_ && !zygote_->gone) {
    // New limits apply to workers started from now on: a fresh zygote carries them.
    zygote_->gone = true;
    zygote_->channel->Close();
    kill(zygote_->pid, SIGKILL);
    zygote_.reset();
    StartZygote();
  }
  ResizePool();
  spdlog::info("SIGHUP: configuration reloaded from {} ({} workers)", config_.config_path, config_.workers);
  notifier_.Notify("READY=1\nSTATUS=serving " + std::to_string(models_.size()) + " models with " +
                   std::to_string(config_.workers) + " workers");
  Dispatch();
}

}  // namespace shoal
