#include "supervisor/supervisor.h"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "base/subprocess.h"
#include "supervisor/metrics_page.h"

namespace shoal {

namespace asio = boost::asio;

Supervisor::Supervisor(asio::io_context& io, SupervisorConfig config)
    : io_(io),
      config_(std::move(config)),
      pool_(io, config_, &arenas_, this),
      scheduler_(io, config_, &pool_, &arenas_, &metrics_),
      registry_(io, config_, &pool_, &scheduler_),
      repository_(io, config_, &registry_),
      front_(io, config_, &registry_, &repository_, &scheduler_, &arenas_, &pool_, &metrics_),
      signals_(io) {
  scheduler_.set_before_dispatch([this] { BeforeDispatch(); });
  registry_.set_on_failed([this](const std::string& model, const std::string& why) {
    notifier_.Notify("STATUS=model '" + model + "' failed: " + why);
    repository_.Failed(model, why);
  });
  repository_.set_on_changed([this] {
    CheckReady();
    scheduler_.Dispatch();
  });
}

Supervisor::~Supervisor() = default;

Result<std::vector<std::pair<std::string, ArchiveRef>>> OpenConfiguredModels(const SupervisorConfig& config) {
  std::vector<std::pair<std::string, ArchiveRef>> out;
  for (const auto& [name, path] : config.models) {
    auto archive = ArchiveFile::Open(path);
    if (!archive.ok()) return Status(archive.status().code(), "model '" + name + "': " + archive.status().message());
    out.emplace_back(name, std::move(*archive));
  }
  return out;
}

Status Supervisor::Start(std::vector<std::pair<std::string, ArchiveRef>> models) {
  if (config_.workers < 1 || config_.workers > 1024) return Status::BadRequest("--workers must be between 1 and 1024");
  if (config_.worker_binary.empty()) {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    // One interpreter per worker: the worker run by the python3 executable (PGO+LTO: Python
    // takes about 20% less time than on the shared libpython, bench/README.md); several
    // need shoal-worker.
    auto fast = self.parent_path() / "shoal-worker-py";
    config_.worker_binary = config_.interpreters == 1 && access(fast.c_str(), X_OK) == 0
                                ? fast.string()
                                : (self.parent_path() / "shoal-worker").string();
  }
  if (access(config_.worker_binary.c_str(), X_OK) != 0) {
    return Status::FromErrno("worker binary " + config_.worker_binary + " is not executable (pass --worker-binary PATH)",
                             errno);
  }
  if (auto st = front_.SetAdminGroup(config_.admin_group); !st.ok()) return st;
  auto user = ChooseWorkerUser(config_.worker_user, geteuid());
  if (!user.ok()) return user.status();
  if (*user) {
    spdlog::info("workers run as {}, with no supplementary groups and no capabilities", (*user)->Describe());
  } else if (geteuid() == 0) {
    spdlog::warn("worker_user = shoald: workers run as root (with no capabilities) and can read what root can");
  }
  // Not dumpable: no process of shoald's user (model code in a worker, for one) may read or
  // write its memory through /proc/PID/mem or ptrace it. /proc/self reads come before this.
  if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) spdlog::warn("PR_SET_DUMPABLE: {}", std::strerror(errno));
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
  auto where = front_.Listen();
  if (!where.ok()) return where.status();
  if (!config_.metrics_address.empty()) {
    auto address = ParseListenAddress(config_.metrics_address, "metrics_address");  // checked already
    if (!address.ok()) return address.status();
    metrics_server_ = std::make_unique<MetricsServer>(io_, *address, [this] {
      return MetricsPage(metrics_, front_.clients(), registry_, pool_, arenas_);
    });
    auto served = metrics_server_->Listen();
    if (!served.ok()) return served.status();
    spdlog::info("metrics served on {} (GET /metrics)", *served);
  }

  signals_.add(SIGCHLD);
  signals_.add(SIGTERM);
  signals_.add(SIGINT);
  signals_.add(SIGHUP);
  WaitSignal();
  signal(SIGPIPE, SIG_IGN);

  // A configured model may name its device: "NAME@cuda:1=ARCHIVE" (checked once the pool
  // knows its GPUs, below).
  std::vector<std::pair<std::string, std::string>> devices;
  std::vector<ArchiveRef> configured;
  for (auto& [spec, archive] : models) {
    auto at = spec.find('@');
    std::string name = spec.substr(0, at);
    std::string device = at == std::string::npos ? "auto" : spec.substr(at + 1);
    devices.emplace_back(name, device);
    configured.push_back(archive);
    registry_.AddConfigured(name, std::move(archive), device);
  }
  if (auto st = repository_.Start(configured); !st.ok()) return st;
  notifier_.Notify("STATUS=starting " + std::to_string(config_.workers) + " workers, loading " +
                   std::to_string(registry_.size()) + " models");
  // Workers forked by the zygote are reparented to us when their middle process exits:
  // as a subreaper we wait for them (and learn how they died) ourselves.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  pool_.Start(*user);
  for (const auto& [name, device] : devices) {
    if (auto st = pool_.CheckDevice(name, device); !st.ok()) return st.status();
  }
  if (!config_.http_address.empty()) {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    std::string binary = (self.parent_path() / "shoal-http").string();
    if (access(binary.c_str(), X_OK) != 0) {
      return Status::FromErrno("http_address is set but " + binary + " (the HTTP front) is not executable", errno);
    }
    http_front_ = std::make_unique<HttpFront>(io_, config_, &front_, binary);
    pool_.set_other_children([this](pid_t pid, int status) { return http_front_->OnExited(pid, status); });
    if (auto st = http_front_->Start(); !st.ok()) return st;
  }
  spdlog::info("shoald listening on {} with {} workers", *where, config_.workers);
  if (notifier_.watchdog_interval()) Watchdog();
  CheckReady();
  return Status::Ok();
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

void Supervisor::OnWorkerSpawned(ModelHosts::Worker worker) {
  registry_.LoadInto(
      worker,
      [this, worker](const std::string& model, const Status& st, const std::string& tb) {
        if (!st.ok()) {
          spdlog::error("worker {} could not load model '{}': {}{}", worker.slot, model, st.ToString(),
                        tb.empty() ? "" : "\n" + tb);
          bool starting = !ready_sent_ && st.code() != Code::kWorkerCrashed && !stopping_;
          // An archive of the model repository that fails is that file's problem alone (reported,
          // and unloaded); a model line's is a start-up failure, not something to retry.
          if (starting && !repository_.LoadFailed(model, st)) {
            notifier_.Notify("STATUS=model '" + model + "' failed to load: " + st.message());
            spdlog::critical("configured model '{}' cannot be loaded; stopping", model);
            exit_code_ = 1;
            Shutdown();
            return;
          }
        }
        CheckReady();
        scheduler_.Dispatch();
      },
      [this, worker] { pool_.MarkStarted(worker); });
}

void Supervisor::OnWorkerDied(const std::vector<CrashCharge>& charges, const std::string& how) {
  for (const auto& charge : charges) metrics_.CrashLoop(charge.model, registry_.RecordCrash(charge, how));
  scheduler_.Dispatch();  // may finish the drain
}

void Supervisor::OnSlotsChanged() { scheduler_.Dispatch(); }

void Supervisor::BeforeDispatch() {
  if (stopping_) {
    if (pool_.RunningJobs() == 0) FinishShutdown();  // the drain is over
    return;
  }
  registry_.CheckUnloads();
}

void Supervisor::CheckReady() {
  if (ready_sent_ || stopping_) return;
  // Ready means full capacity: every worker has loaded every configured model.
  if (!pool_.AllServe(registry_.Names())) return;
  ready_sent_ = true;
  notifier_.Notify("READY=1\nSTATUS=serving " + std::to_string(registry_.size()) + " models with " +
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

void Supervisor::WaitSignal() {
  signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
    if (!ec) OnSignal(sig);
  });
}

void Supervisor::OnSignal(int sig) {
  if (sig == SIGCHLD) {
    pool_.Reap();
  } else if (sig == SIGHUP) {
    Reload();
  } else if (sig == SIGTERM || sig == SIGINT) {
    spdlog::info("received {}: shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    Shutdown();
  }
  if (!finished_) WaitSignal();  // SIGCHLD still reaps while draining
}

void Supervisor::Shutdown() {
  if (stopping_) return;
  stopping_ = true;
  notifier_.Notify("STOPPING=1\nSTATUS=draining: finishing running jobs");
  front_.StopAccepting();
  if (http_front_) http_front_->Stop();
  pool_.Stop();
  scheduler_.Stop();
  drain_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(config_.drain_grace_ms));
  drain_timer_->async_wait([this](const boost::system::error_code& ec) {
    if (!ec) FinishShutdown();
  });
  scheduler_.Dispatch();  // finishes at once when nothing is running
}

void Supervisor::FinishShutdown() {
  if (finished_) return;
  finished_ = true;
  if (drain_timer_) drain_timer_->cancel();
  if (watchdog_timer_) watchdog_timer_->cancel();
  pool_.KillAll();  // running jobs and loads are answered UNAVAILABLE
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
    front_.CloseAll();
    if (metrics_server_) metrics_server_->Stop();
    pool_.Reap();
    signals_.cancel();
    io_.stop();
  });
}

void Supervisor::Reload() {
  if (stopping_) return;
  if (!config_.config_path.empty()) {
    ReloadFile();
  } else if (repository_.folder().empty()) {
    spdlog::warn("SIGHUP: shoald was started without --config or model_repository; nothing to reload");
  }
  repository_.Reconcile();
  scheduler_.Dispatch();
}

void Supervisor::ReloadFile() {
  notifier_.Notify("RELOADING=1\nSTATUS=reloading " + config_.config_path);
  // The file again with the command line's overrides on top; restart-only settings as they run.
  auto reloaded = ReloadConfig(config_);
  if (!reloaded.ok()) {
    spdlog::error("SIGHUP: keeping the current configuration: {}", reloaded.status().message());
    notifier_.Notify("READY=1\nSTATUS=reload failed: " + reloaded.status().message());
    return;
  }
  SupervisorConfig& fresh = reloaded->config;
  if (auto st = front_.SetAdminGroup(fresh.admin_group); !st.ok()) {
    spdlog::error("SIGHUP: keeping the current configuration: {}", st.message());
    notifier_.Notify("READY=1\nSTATUS=reload failed: unknown admin_group");
    return;
  }
  for (const auto& setting : reloaded->needs_restart) {
    spdlog::warn("SIGHUP: {} takes effect only when shoald restarts", setting);
  }
  bool sandbox_changed = fresh.sandbox.ToArgs() != config_.sandbox.ToArgs();
  config_ = std::move(fresh);  // the roles read it by reference
  spdlog::set_level(spdlog::level::from_str(config_.log_level));
  pool_.Resize(sandbox_changed);
  spdlog::info("SIGHUP: configuration reloaded from {} ({} workers)", config_.config_path, config_.workers);
  notifier_.Notify("READY=1\nSTATUS=serving " + std::to_string(registry_.size()) + " models with " +
                   std::to_string(config_.workers) + " workers");
  scheduler_.Dispatch();
}

}  // namespace shoal
