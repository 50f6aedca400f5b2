#include "supervisor/client_front.h"

#include <grp.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>

#include "package_format/served_object.h"
#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/model_name.h"
#include "protocol/paths.h"
#include "supervisor/archive_file.h"
#include "supervisor/status_report.h"

namespace shoal {

namespace asio = boost::asio;
using local = asio::local::stream_protocol;

ClientFront::ClientFront(asio::io_context& io, const SupervisorConfig& config, ModelRegistry* registry,
                         const ModelRepository* repository, Scheduler* scheduler, ArenaTable* arenas,
                         WorkerPool* pool, Metrics* metrics)
    : io_(io),
      config_(config),
      registry_(registry),
      repository_(repository),
      scheduler_(scheduler),
      arenas_(arenas),
      pool_(pool),
      metrics_(metrics),
      started_(std::chrono::steady_clock::now()) {}

Result<std::string> ClientFront::Listen() {
  std::string where = config_.socket_path;
  if (config_.listen_fd >= 0) {
    // Socket activation: systemd owns the socket file, its mode and its group.
    acceptor_ = std::make_unique<local::acceptor>(io_);
    boost::system::error_code aec;
    acceptor_->assign(local(), config_.listen_fd, aec);
    if (aec) return Status(Code::kIoError, "cannot adopt the socket passed by systemd: " + aec.message());
    where = "(socket from systemd)";
  } else {
    // A stale socket file from a dead shoald is removed; a live one is left alone.
    std::filesystem::path sp(config_.socket_path);
    std::error_code ec;
    if (config_.socket_path == DefaultSocketPath() && getenv("SHOAL_SOCKET") == nullptr) {
      // The default folder is private (0700) and must be ours: another user could have
      // made /tmp/shoal-UID first to receive our clients' arenas.
      mkdir(sp.parent_path().c_str(), 0700);
      if (auto st = CheckSocketFolder(config_.socket_path); !st.ok()) return st;
    }
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
  accepting_ = true;
  Accept();
  return where;
}

Status ClientFront::SetAdminGroup(const std::string& group) {
  gid_t gid = static_cast<gid_t>(-1);
  if (!group.empty()) {
    struct group* g = getgrnam(group.c_str());
    if (g == nullptr) {
      return Status::BadRequest("admin_group '" + group + "' does not exist (create it or change admin_group in the "
                                "configuration)");
    }
    gid = g->gr_gid;
  }
  admin_group_ = group;
  admin_gid_ = gid;
  return Status::Ok();
}

void ClientFront::StopAccepting() {
  accepting_ = false;
  boost::system::error_code ec;
  if (accept_timer_) accept_timer_->cancel();
  if (acceptor_) acceptor_->close(ec);
  if (config_.listen_fd < 0) {
    std::error_code fec;
    std::filesystem::remove(config_.socket_path, fec);
  }
}

void ClientFront::CloseAll() {
  for (auto& [id, s] : sessions_) s->channel->Close();
}

void ClientFront::Accept() {
  acceptor_->async_accept([this](const boost::system::error_code& ec, local::socket sock) {
    if (ec == asio::error::operation_aborted || !accepting_) return;
    if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space || ec == asio::error::no_memory ||
        ec.value() == ENFILE) {
      return AcceptLater(ec);
    }
    if (!ec && sessions_.size() >= config_.max_clients) {
      Refuse(sock.release(), Status(Code::kOverloaded, "shoald serves " + std::to_string(sessions_.size()) +
                                                           " clients already (max_clients); close idle connections "
                                                           "or retry later"));
    } else if (!ec && FromModelCode(sock.native_handle())) {
      Refuse(sock.release(), Status::BadRequest("connections from model code (a worker's process group) are refused"));
    } else if (!ec && NearDescriptorLimit(sock.native_handle())) {
      // Descriptors are kept in reserve for what workers send (the output arenas of
      // answers): a connection that would use them up is refused instead.
      Refuse(sock.release(), Status(Code::kOverloaded, "shoald is near its limit of open files (" +
                                                           std::to_string(sessions_.size()) +
                                                           " clients); close idle connections or retry later"));
    } else if (!ec) {
      Serve(sock.release());
    } else {
      spdlog::warn("accept: {}", ec.message());
    }
    Accept();
  });
}

std::shared_ptr<ClientSession> ClientFront::Serve(int fd, bool never_admin) {
  auto s = std::make_shared<ClientSession>();
  s->id = next_session_++;
  s->never_admin = never_admin;  // before a frame can be read
  if (auto st = ReadPeerCredentials(fd, s.get()); !st.ok()) spdlog::warn("{}", st.ToString());
  s->channel = std::make_shared<AsyncChannel>(io_, fd);
  s->channel->set_frame_timeout(std::chrono::milliseconds(config_.frame_timeout_ms));
  sessions_[s->id] = s;
  std::weak_ptr<ClientSession> weak = s;
  s->channel->Start(
      [this, weak](std::string body, std::vector<int>* fds) {
        if (auto s = weak.lock()) OnFrame(s, std::move(body), fds);
      },
      [this, weak](const Status& why) {
        auto s = weak.lock();
        if (!s) return;
        if (why.code() == Code::kBadRequest) {
          // A framing error cannot be resynchronised: say why, then hang up.
          spdlog::warn("{}: {}", s->Describe(), why.message());
          s->channel->Send(ErrorReply(0, why));
        }
        OnClosed(s);
      });
  return s;
}

uint64_t ClientFront::Adopt(int fd) { return Serve(fd, /*never_admin=*/true)->id; }

void ClientFront::AcceptLater(const boost::system::error_code& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_accept_warning_ > std::chrono::seconds(10)) {
    last_accept_warning_ = now;
    spdlog::warn("accept: {} ({} clients connected); retrying every 100 ms, this warning at most every 10 s",
                 why.message(), sessions_.size());
  }
  accept_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(100));
  accept_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (!ec && accepting_) Accept();
  });
}

bool ClientFront::FromModelCode(int fd) const {
  ClientSession peer;
  if (!ReadPeerCredentials(fd, &peer).ok() || peer.pid <= 0) return false;
  pid_t pgid = getpgid(peer.pid);
  if (pgid <= 0 || !pool_->IsWorkerGroup(pgid)) return false;
  spdlog::warn("refused a connection from pid {} (uid {}): it runs in worker process group {} (model code)", peer.pid,
               peer.uid, pgid);
  return true;
}

bool ClientFront::NearDescriptorLimit(int fd) {
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur == RLIM_INFINITY) return false;
  // The kernel hands out the lowest free number: `fd` is about how many are open.
  return static_cast<rlim_t>(fd) + kReservedDescriptors >= lim.rlim_cur;
}

void ClientFront::Refuse(int fd, const Status& why) {
  OwnedFd closer(fd);
  std::string reply = EncodeFrame(ErrorReply(0, why));
  // Best effort and non-blocking: a fresh socket takes a short reply at once.
  (void)send(fd, reply.data(), reply.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
}

void ClientFront::ReplyOk(const std::shared_ptr<ClientSession>& s, uint64_t id) {
  Writer w;
  BeginReply(&w, id, 0);
  s->channel->Send(w.body());
}

void ClientFront::OnFrame(const std::shared_ptr<ClientSession>& s, std::string body, std::vector<int>* fds) {
  auto oh = Decode(body);
  if (!oh.ok()) return s->channel->Send(ErrorReply(0, oh.status()));
  MapView m(oh->get());
  uint64_t id = 0;
  if (auto rid = m.OptUint("id"); rid.ok() && rid->has_value()) id = **rid;
  auto st = [&]() -> Status {
    if (auto v = m.Uint("v"); !v.ok() || *v != kProtocolVersion) {
      return Status::BadRequest("unsupported protocol version (this shoald speaks v" +
                                std::to_string(kProtocolVersion) + "); upgrade the client");
    }
    auto op = m.Str("op");
    if (!op.ok()) return op.status();
    if (*op == "release") {  // a notice: never answered, a bad one is ignored
      Release(*s, m);
      return Status::Ok();
    }
    if (*op == "infer") {
      std::string model;
      Status refused = Infer(s, id, m, &model);
      if (!refused.ok()) metrics_->Answered(model, refused.code());
      return refused;
    }
    if (*op == "register_arena") return RegisterArena(s, id, m, fds);
    if (*op == "load") return Load(s, id, m, fds);
    if (*op == "unload") return Unload(s, id, m);
    if (*op == "ping") {
      ReplyOk(s, id);
      return Status::Ok();
    }
    Writer w;
    if (*op == "models") {
      bool admin = IsAdmin(*s);
      bool repo = ShowsRepository(*repository_, admin);
      BeginReply(&w, id, repo ? 2 : 1);
      PackModels(&w, *registry_, admin);
      if (repo) PackRepository(&w, *repository_);
    } else if (*op == "status") {
      ServiceFigures f;
      f.clients = sessions_.size();
      f.arenas = arenas_->size();
      f.uptime_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
      f.admin = IsAdmin(*s);
      PackStatus(&w, id, f, *registry_, *repository_, *scheduler_, *pool_);
    } else if (*op == "health") {
      PackHealth(&w, id, scheduler_->stopped(), *registry_);
    } else {
      return Status::BadRequest("unknown operation '" + *op + "'");
    }
    s->channel->Send(w.body());
    return Status::Ok();
  }();
  if (!st.ok()) s->channel->Send(ErrorReply(id, st));
}

void ClientFront::OnClosed(const std::shared_ptr<ClientSession>& s) {
  s->closed = true;
  // Queued jobs of this client are dropped; running ones finish and are discarded.
  scheduler_->DropClient(s.get());
  for (uint64_t a : s->arenas) {
    pool_->DropArena(a);
    arenas_->Drop(a);
  }
  // Workers drop the output arenas they made for it (the client's mappings stay valid).
  arenas_->DropClientOutputs(s->id);
  pool_->DropClient(s->id);
  sessions_.erase(s->id);
}

void ClientFront::Release(const ClientSession& s, const MapView& m) {
  auto arena = m.Uint("arena");
  auto blocks = m.Array("blocks");
  if (!arena.ok() || !blocks.ok()) return;
  const ArenaEntry* a = arenas_->Find(*arena);
  // Only the connection the arena was made for may release its blocks; the worker that
  // owns it frees only blocks it handed out, so a forged offset changes nothing.
  if (a == nullptr || !a->by_worker() || a->owner != s.id) return;
  std::vector<uint64_t> offsets;
  const auto& arr = (*blocks)->via.array;
  for (uint32_t i = 0; i < arr.size; ++i) {
    if (arr.ptr[i].type == msgpack::type::POSITIVE_INTEGER) offsets.push_back(arr.ptr[i].via.u64);
  }
  if (!offsets.empty()) pool_->Release(a->worker, a->generation, a->local, offsets);
}

Status ClientFront::RegisterArena(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m,
                                  std::vector<int>* fds) {
  if (fds->empty()) return Status::BadRequest("register_arena needs a memfd attached (SCM_RIGHTS)");
  auto fd = std::make_shared<OwnedFd>(fds->front());  // closed on every error path below
  fds->erase(fds->begin());
  if (s->arenas.size() >= 64) return Status::BadRequest("too many arenas on one connection (64 at most)");
  // A GPU arena says on which GPU (PCI bus id) and how large it is: its fd cannot say.
  auto gpu = m.OptStr("gpu");
  auto size = m.OptUint("size");
  if (!gpu.ok()) return gpu.status();
  if (!size.ok()) return size.status();
  if (gpu->has_value() && !size->has_value()) return Status::BadRequest("a GPU arena needs its \"size\"");
  if (gpu->has_value() && !pool_->KnowsGpu(**gpu)) {
    return Status::BadRequest("GPU arena on GPU '" + **gpu + "': shoald's workers use no such GPU (see `status`, "
                              "each worker's \"gpu\"); allocate inputs on one of theirs");
  }
  auto arena = arenas_->Register(s->id, fd, gpu->value_or(""), size->value_or(0));
  if (!arena.ok()) return arena.status();
  s->arenas.insert(*arena);
  Writer w;
  BeginReply(&w, id, 1);
  w.Key("arena"); w.Val(*arena);
  s->channel->Send(w.body());
  return Status::Ok();
}

bool ClientFront::IsAdmin(const ClientSession& s) const {
  if (s.never_admin) return false;
  if (s.uid == 0 || s.uid == geteuid()) return true;
  if (admin_gid_ == static_cast<gid_t>(-1)) return false;
  if (s.gid == admin_gid_) return true;
  for (gid_t g : s.groups) {
    if (g == admin_gid_) return true;
  }
  return false;
}

Status ClientFront::CheckAdmin(const ClientSession& s, const std::string& what) const {
  if (IsAdmin(s)) return Status::Ok();
  spdlog::warn("refused {} from {}: not an administrator", what, s.Describe());
  if (s.never_admin) {
    return Status::BadRequest(what + " refused: this connection is the HTTP front's (shoal-http), which may not " + what +
                              " models; an administrator does that on shoald's Unix socket");
  }
  return Status::BadRequest(what + " refused for uid " + std::to_string(s.uid) + ": " +
                            (what == "load" ? "loading a model runs its code; " : "") +
                            "only root, shoald's own user" +
                            (admin_group_.empty() ? std::string() : " or members of group '" + admin_group_ + "'") +
                            " may " + what + " models");
}

Status ClientFront::Load(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m,
                         std::vector<int>* fds) {
  // The archive travels as the file the client opened with its own rights: shoald opens no
  // path on anyone's behalf (no confused deputy), and every error below speaks only of
  // that file. Taken first, so that a refused load leaves no descriptor behind.
  std::optional<OwnedFd> passed;
  if (!fds->empty()) {
    passed.emplace(fds->front());
    fds->erase(fds->begin());
  }
  if (auto st = CheckAdmin(*s, "load"); !st.ok()) return st;
  auto name = m.Str("name");
  if (!name.ok()) return name.status();
  auto label = m.OptStr("path");
  if (!label.ok()) return label.status();
  if (auto st = CheckModelName(*name); !st.ok()) return st;
  auto asked = m.OptStr("device");
  if (!asked.ok()) return asked.status();
  auto device = pool_->CheckDevice(*name, asked->value_or("auto"));
  if (!device.ok()) return device.status();
  auto batching = LoadBatching(*name, m);
  if (!batching.ok()) return batching.status();
  auto entry = m.OptStr("entry");
  if (!entry.ok()) return entry.status();
  if (entry->has_value()) {
    if (auto st = CheckEntryName(**entry); !st.ok()) return Status::BadRequest("model '" + *name + "': " + st.message());
  }
  auto methods = LoadMethods(*name, m);
  if (!methods.ok()) return methods.status();
  if (!passed) {
    return Status::BadRequest("model '" + *name + "': load needs the archive passed as an open file (SCM_RIGHTS): "
                              "the client opens it with its own rights and attaches it; shoald opens no path on a "
                              "client's behalf. Use a shoal client of this version (shoal load NAME ARCHIVE)");
  }
  std::string shown = label->value_or("");
  if (shown.empty()) shown = "(passed by uid " + std::to_string(s->uid) + ")";
  auto archive = ArchiveFile::Adopt(passed->release(), shown, entry->value_or(""));
  if (!archive.ok()) return Status(archive.status().code(), "model '" + *name + "': " + archive.status().message());
  std::weak_ptr<ClientSession> weak = s;
  return registry_->Load(
      *name, std::move(*archive),
      [this, weak, id](const Status& st, const std::string& tb) {
        auto s = weak.lock();
        if (!s) return;
        if (st.ok()) {
          ReplyOk(s, id);
        } else {
          s->channel->Send(ErrorReply(id, st, tb));
        }
      },
      *device, *batching, std::move(*methods));
}

Result<std::vector<std::string>> ClientFront::LoadMethods(const std::string& name, const MapView& m) {
  std::vector<std::string> out;
  const msgpack::object* o = m.Find("methods");
  if (o == nullptr || o->type == msgpack::type::NIL) return out;
  const Status wrong = Status::BadRequest("model '" + name + "': methods must be a list of at most " +
                                          std::to_string(kMaxMethods) + " method names");
  if (o->type != msgpack::type::ARRAY || o->via.array.size > kMaxMethods) return wrong;
  for (uint32_t i = 0; i < o->via.array.size; ++i) {
    const auto& e = o->via.array.ptr[i];
    if (e.type != msgpack::type::STR) return wrong;
    out.emplace_back(e.via.str.ptr, e.via.str.size);
  }
  if (auto st = CheckMethodNames(out); !st.ok()) return Status::BadRequest("model '" + name + "': " + st.message());
  return out;
}

Result<BatchOverride> ClientFront::LoadBatching(const std::string& name, const MapView& m) {
  BatchOverride out;
  auto whole = [&](const char* key, const msgpack::object* o, uint64_t* n) {
    if (o->type != msgpack::type::POSITIVE_INTEGER) {
      return Status::BadRequest("model '" + name + "': " + key + " must be a whole number");
    }
    *n = o->via.u64;
    return Status::Ok();
  };
  uint64_t n = 0;
  if (const msgpack::object* o = m.Find("max_batch"); o != nullptr && o->type != msgpack::type::NIL) {
    if (auto st = whole("max_batch", o, &n); !st.ok()) return st;
    out.max_batch = static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX));
  }
  if (const msgpack::object* o = m.Find("max_delay_us"); o != nullptr && o->type != msgpack::type::NIL) {
    if (auto st = whole("max_delay_us", o, &n); !st.ok()) return st;
    out.max_delay_us = n;
  }
  if (const msgpack::object* o = m.Find("preferred_batch_sizes"); o != nullptr && o->type != msgpack::type::NIL) {
    if (o->type != msgpack::type::ARRAY || o->via.array.size > 8) {
      return Status::BadRequest("model '" + name + "': preferred_batch_sizes must be a list of at most 8 whole numbers");
    }
    out.preferred_batch_sizes.emplace();
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      if (auto st = whole("preferred_batch_sizes", &o->via.array.ptr[i], &n); !st.ok()) return st;
      out.preferred_batch_sizes->push_back(static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)));
    }
  }
  return out;
}

Status ClientFront::Unload(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m) {
  if (auto st = CheckAdmin(*s, "unload"); !st.ok()) return st;
  auto name = m.Str("name");
  if (!name.ok()) return name.status();
  std::weak_ptr<ClientSession> weak = s;
  return registry_->Unload(*name, [this, weak, id] {
    if (auto s = weak.lock(); s && !s->closed) ReplyOk(s, id);
  });
}

Status ClientFront::Infer(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m,
                          std::string* model_key) {
  if (scheduler_->stopped()) return Status(Code::kUnavailable, "shoald is shutting down; retry on another instance");
  auto requested = m.Str("model");
  if (!requested.ok()) return requested.status();
  auto model = registry_->Resolve(*requested);
  if (!model.ok()) return model.status();
  *model_key = *model;
  auto inputs = m.Array("inputs");
  if (!inputs.ok()) return inputs.status();
  const auto& arr = (*inputs)->via.array;
  if (arr.size > 256) return Status::BadRequest("too many inputs (" + std::to_string(arr.size) + ", at most 256)");
  auto job = std::make_shared<Job>();
  for (uint32_t i = 0; i < arr.size; ++i) {
    std::string which = "input " + std::to_string(i) + ": ";
    auto d = Descriptor::Parse(arr.ptr[i]);
    if (!d.ok()) return Status::BadRequest(which + d.status().message());
    if (!d->gpu.empty()) return Status::BadRequest(which + "\"gpu\" names the GPU of an empty output only");
    const ArenaEntry* a = arenas_->FindOwned(d->arena, s->id);
    if (a == nullptr) {
      return Status::BadRequest(which + "arena " + std::to_string(d->arena) + " is not registered on this connection");
    }
    if (auto st = d->CheckBounds(a->size); !st.ok()) return Status::BadRequest(which + st.message());
    // A tensor whose strides overlap (stride 0) is small in the arena but large to the
    // model: the first operation on it may allocate its full logical size. Only a model
    // whose manifest says it takes broadcast inputs gets them (its worker's memory limit
    // still bounds what it does with them).
    auto logical = d->LogicalBytes();
    if (!logical.ok()) return Status::BadRequest(which + logical.status().message());
    if (auto extent = d->Extent(); extent.ok() && *logical > *extent && !registry_->TakesBroadcastInputs(*model)) {
      return Status::BadRequest(which + "its strides overlap: " + std::to_string(*extent) + " bytes in the arena stand for " +
                                std::to_string(*logical) + " bytes of tensor, and model '" + *model +
                                "' does not take broadcast inputs; send a dense tensor (x.contiguous()), or export "
                                "the model with broadcast_inputs=True");
    }
    if (!a->gpu.empty()) {
      // The worker that runs it sees one GPU, and maps GPU memory of that GPU only.
      if (!job->gpu.empty() && job->gpu != a->gpu) {
        return Status::BadRequest(which + "it is on GPU " + a->gpu + ", an earlier input on GPU " + job->gpu +
                                  ": a job's GPU inputs must all be on one GPU; copy them to one");
      }
      job->gpu = a->gpu;
    }
    job->inputs.push_back(std::move(*d));
  }
  // The call's own structure (docs/protocol.md, "Call structure"): checked here, so that
  // a worker only builds structures that are sound; forwarded as it came.
  auto call = ParseCallTree(m, job->inputs.size());
  if (!call.ok()) {
    return Status(call.status().code(),
                  "model '" + *model + "', request " + std::to_string(id) + ": " + call.status().message());
  }
  if (auto st = registry_->AllowsMethod(*model, call->method); !st.ok()) {
    return Status(st.code(), "model '" + *model + "', request " + std::to_string(id) + ": " + st.message());
  }
  job->call = std::move(*call);
  auto timeout = m.OptUint("timeout_ms");
  if (!timeout.ok()) return timeout.status();
  auto retries = m.OptUint("retries");
  if (!retries.ok()) return retries.status();
  if (retries->value_or(0) > 1) {
    return Status::BadRequest("retries must be 0 or 1: a job that crashed a worker is re-run at most once");
  }
  job->retries = static_cast<int>(retries->value_or(0));
  auto outputs = m.OptStr("outputs");
  if (!outputs.ok()) return outputs.status();
  if (outputs->has_value() && **outputs != "cpu" && **outputs != "auto") {
    return Status::BadRequest("outputs must be \"cpu\" (GPU outputs come back as host tensors) or \"auto\", not \"" +
                              **outputs + "\"");
  }
  job->host_outputs = outputs->value_or("auto") == "cpu";
  job->id = next_job_++;
  job->request_id = id;
  job->client = s;
  job->client_id = s->id;
  job->client_uid = s->uid;
  job->model = *model;
  // A job that calls with a structure or another method runs alone (BatchCompatible).
  if (!job->call.structured() && job->call.method.empty()) job->batching = registry_->Batching(*model);
  if (auto st = registry_->Admits(*model, s->uid); !st.ok()) return st;
  // Placement, not readiness, decides: while GPU X's only worker restarts, X's jobs wait.
  if (!job->gpu.empty() && !pool_->PlacesOnGpu(registry_->Device(*model), job->gpu)) {
    return Status::BadRequest("model '" + *model + "' runs on no worker of GPU " + job->gpu +
                              ", where the job's inputs are (see `status`: each worker's \"gpu\" and models); "
                              "allocate the inputs on a GPU that serves it, or in host memory");
  }
  uint64_t retry_ms = 0;
  auto st = scheduler_->Submit(job, timeout->value_or(config_.default_timeout_ms), &retry_ms);
  if (st.code() == Code::kOverloaded) {
    metrics_->Answered(*model, st.code());
    s->channel->Send(ErrorReply(id, st, {}, retry_ms));
    return Status::Ok();
  }
  return st;
}

}  // namespace shoal
