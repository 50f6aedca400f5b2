// Supervisor: shoald as a service. Builds the roles and wires them together, and does
// what belongs to the service as a whole: signals (SIGCHLD to the pool's reaper, SIGTERM
// and SIGINT drain, SIGHUP reloads the configuration), the shutdown drain, systemd's
// notify protocol and watchdog, and start-up readiness.
//
// The roles, each in its own file: ClientFront (client socket and operations),
// ModelRegistry (models, versions, load/unload, crash records), ModelRepository (the
// model_repository folder, read at start and on SIGHUP), Scheduler (queue, dispatch,
// deadlines, answers), WorkerPool (processes, zygote, slots), ArenaTable, and where
// metrics_address is set, Metrics and the MetricsServer that serves them.
// Everything runs on one Boost.Asio event loop thread; signals are only queued by Asio's
// signal_set and handled on the loop. Every accepted job is answered exactly once.
// Thread-safety: construct, Start() and run the loop on one thread; nothing is shared.
#pragma once

#include <boost/asio.hpp>
#include <memory>
#include <set>
#include <string>

#include "shoal/status.h"
#include "supervisor/arena_table.h"
#include "supervisor/client_front.h"
#include "supervisor/config.h"
#include "supervisor/metrics.h"
#include "supervisor/http_front.h"
#include "supervisor/metrics_server.h"
#include "supervisor/model_registry.h"
#include "supervisor/model_repository.h"
#include "supervisor/scheduler.h"
#include "supervisor/systemd.h"
#include "supervisor/worker_pool.h"

namespace shoal {

// shoald's own loads (the configuration file, --model, model_repository): opens each
// archive with shoald's rights and checks it; the first error names the model.
Result<std::vector<std::pair<std::string, ArchiveRef>>> OpenConfiguredModels(const SupervisorConfig& config);

class Supervisor : private PoolListener {
 public:
  Supervisor(boost::asio::io_context& io, SupervisorConfig config);
  ~Supervisor() override;
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Binds the socket (or adopts config.listen_fd), spawns the workers, loads the
  // configured models and those of the model repository, installs signals. READY=1 goes
  // to systemd once they all serve (the repository's archives that fail are reported, not
  // waited for).
  // `models`: config.models' archives, opened and checked by shoald itself (main does so
  // before anything starts: OpenConfiguredModels); held for the models' lifetime.
  Status Start(std::vector<std::pair<std::string, ArchiveRef>> models);
  // What main should return once the loop stops: 0 after a drain, 1 when a configured
  // model could not be loaded at start-up.
  int exit_code() const { return exit_code_; }

 private:
  // PoolListener
  void OnWorkerSpawned(ModelHosts::Worker worker) override;
  void OnWorkerDied(const std::vector<CrashCharge>& charges, const std::string& how) override;
  void OnSlotsChanged() override;

  // K > 1: runs shoal-worker --check-interpreters; an error says why K > 1 cannot work here.
  Status CheckInterpreters();
  void WaitSignal();
  void OnSignal(int sig);
  void Reload();          // SIGHUP: re-read the configuration file and the model repository
  void ReloadFile();      // ... the configuration file
  void Shutdown();        // SIGTERM/SIGINT: drain, then stop
  void FinishShutdown();  // kill workers, close clients, stop the loop
  void BeforeDispatch();  // unload drains; the shutdown drain's end
  void CheckReady();      // READY=1 once every configured model serves
  void Watchdog();

  boost::asio::io_context& io_;
  SupervisorConfig config_;  // the roles read it; only Reload changes it
  Metrics metrics_;          // counted into by the scheduler, the front and OnWorkerDied
  ArenaTable arenas_;
  WorkerPool pool_;
  Scheduler scheduler_;
  ModelRegistry registry_;
  ModelRepository repository_;
  ClientFront front_;
  std::unique_ptr<MetricsServer> metrics_server_;  // where metrics_address is set
  std::unique_ptr<HttpFront> http_front_;          // where http_address is set
  boost::asio::signal_set signals_;
  Notifier notifier_;
  bool stopping_ = false;
  bool finished_ = false;
  bool ready_sent_ = false;
  int exit_code_ = 0;
  std::unique_ptr<boost::asio::steady_timer> watchdog_timer_;
  std::unique_ptr<boost::asio::steady_timer> drain_timer_;
};

}  // namespace shoal
