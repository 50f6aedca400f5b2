// ClientFront: the client socket. Accepts connections, decodes each client's operations
// (docs/protocol.md), checks who may do what (SO_PEERCRED: load/unload only for admins),
// validates an infer's descriptors against the client's own arenas, and hands the work to
// the role that owns it: jobs to the scheduler, models to the registry, arenas to the
// arena table. Owns the acceptor and the client sessions.
// Thread-safety: loop thread only.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "protocol/messages.h"
#include "supervisor/arena_table.h"
#include "supervisor/client_session.h"
#include "supervisor/config.h"
#include "supervisor/metrics.h"
#include "supervisor/model_registry.h"
#include "supervisor/model_repository.h"
#include "supervisor/scheduler.h"
#include "supervisor/worker_pool.h"

namespace shoal {

class ClientFront {
 public:
  // Everything passed must outlive the front. Infer requests it refuses before they become
  // jobs are counted into `metrics` (the scheduler counts the others).
  ClientFront(boost::asio::io_context& io, const SupervisorConfig& config, ModelRegistry* registry,
              const ModelRepository* repository, Scheduler* scheduler, ArenaTable* arenas, WorkerPool* pool,
              Metrics* metrics);
  ClientFront(const ClientFront&) = delete;
  ClientFront& operator=(const ClientFront&) = delete;

  // Binds config.socket_path (removing a stale socket file, refusing a live one) or adopts
  // config.listen_fd, and starts accepting. Returns the address it serves, for logs.
  Result<std::string> Listen();
  // Resolves the admin group (start-up and SIGHUP); an unknown group is an error and
  // changes nothing.
  Status SetAdminGroup(const std::string& group);
  // Shutdown: stops accepting and removes the socket file it created; infer is refused.
  void StopAccepting();
  // Closes every client connection (after the last replies were queued).
  void CloseAll();
  size_t clients() const { return sessions_.size(); }
  // Serves `fd`, one end of a socketpair shoald made for a front of its own (shoal-http),
  // as a client session that is never an admin's. Returns the session's id.
  uint64_t Adopt(int fd);

 private:
  void Accept();
  // Accepting failed for lack of descriptors or memory: try again a little later rather
  // than spin (the pending connection stays in the backlog meanwhile).
  void AcceptLater(const boost::system::error_code& why);
  // Answers a connection it will not serve with `why` and closes it.
  void Refuse(int fd, const Status& why);
  // Whether the peer runs in a worker's process group: model code may not be a client
  // (it would have shoald's uid, so it would be an admin).
  bool FromModelCode(int fd) const;
  // Serves an accepted (or adopted) connection; its peer's credentials are read from it.
  std::shared_ptr<ClientSession> Serve(int fd, bool never_admin = false);
  // Descriptors kept free for what workers send (output arenas travel with answers).
  static constexpr rlim_t kReservedDescriptors = 16;
  // Whether accepting `fd` left fewer than kReservedDescriptors free.
  static bool NearDescriptorLimit(int fd);
  void OnFrame(const std::shared_ptr<ClientSession>& s, std::string body, std::vector<int>* fds);
  void OnClosed(const std::shared_ptr<ClientSession>& s);
  Status RegisterArena(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m, std::vector<int>* fds);
  // load {name, path?, device?, entry?, methods?, batching keys} with the archive's open
  // file attached (the path is a label only).
  Status Load(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m, std::vector<int>* fds);
  // A load's batching keys ("max_batch", "max_delay_us", "preferred_batch_sizes"), typed;
  // the registry checks their values.
  static Result<BatchOverride> LoadBatching(const std::string& name, const MapView& m);
  // A load's "methods": the methods besides forward clients may call (CheckMethodNames).
  static Result<std::vector<std::string>> LoadMethods(const std::string& name, const MapView& m);
  Status Unload(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m);
  // *model: the key the request's model resolved to, once it did.
  Status Infer(const std::shared_ptr<ClientSession>& s, uint64_t id, const MapView& m, std::string* model);
  bool IsAdmin(const ClientSession& s) const;
  // release {arena, blocks}: passed on to the worker that owns that output arena.
  void Release(const ClientSession& s, const MapView& m);
  // OK for admins; else a BAD_REQUEST that says who may `what`.
  Status CheckAdmin(const ClientSession& s, const std::string& what) const;
  void ReplyOk(const std::shared_ptr<ClientSession>& s, uint64_t id);

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  ModelRegistry* registry_;
  const ModelRepository* repository_;  // read for `models` and `status`
  Scheduler* scheduler_;
  ArenaTable* arenas_;
  WorkerPool* pool_;
  Metrics* metrics_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> acceptor_;
  bool accepting_ = false;
  std::unique_ptr<boost::asio::steady_timer> accept_timer_;
  std::chrono::steady_clock::time_point last_accept_warning_;
  std::string admin_group_;
  gid_t admin_gid_ = static_cast<gid_t>(-1);
  std::chrono::steady_clock::time_point started_;
  uint64_t next_session_ = 1;
  uint64_t next_job_ = 1;
  std::map<uint64_t, std::shared_ptr<ClientSession>> sessions_;
};

}  // namespace shoal
