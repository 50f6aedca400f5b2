// Supervisor: the heart of shoald. Owns the client socket, the arenas registry, the model
// registry, the job queue and the worker pool; runs no Python and no model code.
//
// Everything happens on one Boost.Asio event loop thread: client frames, worker replies,
// timers and signals (SIGCHLD, SIGTERM, SIGINT are only queued by Asio's signal_set; the
// loop does the work). Every accepted job is answered exactly once.
// Thread-safety: construct, Start() and Run on the loop thread; nothing is shared.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "protocol/descriptor.h"
#include "protocol/paths.h"
#include "supervisor/client_session.h"
#include "supervisor/config.h"
#include "supervisor/systemd.h"
#include "supervisor/worker_handle.h"
#include "worker/sandbox.h"

namespace shoal {

// The zygote process (worker/zygote.h) as shoald sees it.
struct ZygoteHandle {
  pid_t pid = -1;
  bool gone = false;
  std::shared_ptr<AsyncChannel> channel;
  std::map<uint64_t, std::function<void(pid_t)>> pending;  // fork request id -> callback
  std::chrono::steady_clock::time_point started;
};


struct Job {
  uint64_t id = 0;
  uint64_t request_id = 0;
  std::weak_ptr<ClientSession> client;
  std::string model;
  std::vector<Descriptor> inputs;
  uint64_t out_arena = 0;
  bool answered = false;
  int worker_slot = -1;
  int interp = -1;   // which interpreter of that worker runs it
  int retries = 0;   // how many times the client allows it to be re-run after a crash
  int crashes = 0;   // workers it was running on that died
  std::chrono::steady_clock::time_point accepted;
  std::chrono::steady_clock::time_point started;
  std::unique_ptr<boost::asio::steady_timer> deadline;
};

struct ArenaEntry {
  uint64_t id = 0;
  uint64_t owner = 0;  // client session id
  size_t size = 0;
  std::shared_ptr<OwnedFd> fd;
};

struct ModelEntry {
  std::string path;
  bool loading = true;  // a client's load() is still waiting for the workers
  bool failed = false;  // crash loop: no longer loaded nor served until loaded again
  bool draining = false;  // being unloaded: takes no new jobs, finishes those it has
  std::string engine;     // "python" (torch.package) or "libtorch" (TorchScript), as workers report
  std::string last_error;
  std::deque<std::chrono::steady_clock::time_point> crashes;  // within the crash window
  size_t queued = 0;    // jobs of this model in the queue
  double avg_ms = 0;    // moving average of its jobs' run time (for retry-after hints)
};

class Supervisor {
 public:
  Supervisor(boost::asio::io_context& io, SupervisorConfig config);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Binds the socket (or adopts config.listen_fd), spawns the workers, loads the
  // configured models, installs signals. READY=1 goes to systemd once they all serve.
  Status Start();
  // What main should return once the loop stops: 0 after a drain, 1 when a configured
  // model could not be loaded at start-up.
  int exit_code() const { return exit_code_; }

 private:
  // clients
  void Accept();
  void OnClientFrame(const std::shared_ptr<ClientSession>& s, std::string body, std::vector<int>* fds);
  void OnClientClosed(const std::shared_ptr<ClientSession>& s);
  Status HandleRegisterArena(const std::shared_ptr<ClientSession>& s, uint64_t id, std::vector<int>* fds);
  void HandleLoad(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m);
  void HandleUnload(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m);
  void HandleModels(const std::shared_ptr<ClientSession>& s, uint64_t id);
  void PackModels(Writer* w) const;  // "models": [{name, path, ready, queued, failed, last_error?}]
  void HandleStatus(const std::shared_ptr<ClientSession>& s, uint64_t id);
  Status HandleInfer(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m);
  bool IsAdmin(const ClientSession& s) const;
  void ReplyOk(const std::shared_ptr<ClientSession>& s, uint64_t id);
  void ReplyError(const std::shared_ptr<ClientSession>& s, uint64_t id, const Status& st,
                  std::string_view traceback = {});

  // workers
  void SpawnWorker(int slot);
  void StartZygote();
  void OnZygoteGone(const std::string& how);
  // SIGTERM now, SIGKILL after a short grace if it is still there.
  void TerminateWorker(WorkerHandle* w, const std::string& why);
  void ScheduleRespawn(int slot, std::chrono::milliseconds delay);
  void OnWorkerFrame(WorkerHandle* w, std::string body);
  void OnWorkerGone(WorkerHandle* w, const std::string& how);
  void ReapChildren();
  void SendRequest(WorkerHandle* w, uint64_t id, std::string_view body, WorkerHandle::ReplyFn fn);
  void LoadInWorker(WorkerHandle* w, const std::string& name, const std::string& path,
                    std::function<void(const Status&, const std::string&)> done);
  void SendArenaIfNeeded(WorkerHandle* w, uint64_t arena);
  void SendUnload(WorkerHandle* w, const std::string& model);
  void DropArena(uint64_t arena);

  // jobs
  void Dispatch();
  void RunOn(WorkerHandle* w, int interp, const std::shared_ptr<Job>& job);
  // K > 1: runs shoal-worker --check-interpreters; an error says why K > 1 cannot work here.
  Status CheckInterpreters();
  std::vector<std::string> WorkerArgs() const;  // interpreters + sandbox options
  void OnJobReply(WorkerHandle* w, const std::shared_ptr<Job>& job, const Status& st, const MapView* reply);
  void AnswerJob(const std::shared_ptr<Job>& job, std::string_view body);
  void FailJob(const std::shared_ptr<Job>& job, const Status& st, std::string_view traceback = {});
  void OnDeadline(const std::shared_ptr<Job>& job);
  Status CheckOutputs(const msgpack::object& tree, const Job& job, int depth,
                      std::vector<uint64_t>* blocks) const;
  bool ModelReady(const std::string& name) const;
  // "name:version" as given, or the newest servable "name:*" for a plain name.
  Result<std::string> ResolveModel(const std::string& name) const;
  void CheckUnloads();  // finishes unloads whose models have no jobs left
  void FinishUnload(const std::string& key);

  void OnSignal(int sig);
  void Reload();           // SIGHUP: re-read the configuration file
  void ResizePool();       // start or retire workers to match config_.workers
  void RetireIfDone(WorkerHandle* w);
  void RecordCrash(const std::string& model, const std::string& how);
  void HandleHealth(const std::shared_ptr<ClientSession>& s, uint64_t id);
  void Enqueue(const std::shared_ptr<Job>& job, bool front);
  // Removes *it from the queue and advances `it` past it.
  std::shared_ptr<Job> Dequeue(std::deque<std::shared_ptr<Job>>::iterator& it);
  void Shutdown();         // SIGTERM/SIGINT: drain, then stop
  void FinishShutdown();   // kill workers, close clients, stop the loop
  void CheckReady();       // READY=1 once every configured model serves
  void Watchdog();

  boost::asio::io_context& io_;
  SupervisorConfig config_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
  boost::asio::signal_set signals_;
  std::chrono::steady_clock::time_point started_;
  bool stopping_ = false;
  bool finished_ = false;
  bool ready_sent_ = false;
  int exit_code_ = 0;
  gid_t admin_gid_ = static_cast<gid_t>(-1);
  Notifier notifier_;
  std::unique_ptr<boost::asio::steady_timer> watchdog_timer_;
  std::unique_ptr<boost::asio::steady_timer> drain_timer_;

  uint64_t next_session_ = 1;
  uint64_t next_arena_ = 1;
  uint64_t next_request_ = 1;  // ids of requests to workers (jobs and control)
  std::map<uint64_t, std::shared_ptr<ClientSession>> sessions_;
  std::map<uint64_t, ArenaEntry> arenas_;
  std::map<std::string, ModelEntry> models_;
  std::map<int, std::unique_ptr<WorkerHandle>> workers_;
  std::unique_ptr<ZygoteHandle> zygote_;
  int zygote_streak_ = 0;
  std::map<int, int> crash_streak_;  // slot -> consecutive short-lived crashes
  std::deque<std::shared_ptr<Job>> queue_;
  struct UnloadOp {
    std::weak_ptr<ClientSession> client;
    uint64_t request_id = 0;
    std::set<std::string> keys;  // still draining
    std::unique_ptr<boost::asio::steady_timer> grace;
  };
  std::vector<std::shared_ptr<UnloadOp>> unloads_;
  uint64_t jobs_done_ = 0;
  uint64_t jobs_failed_ = 0;
  uint64_t worker_restarts_ = 0;
};

}  // namespace shoal
