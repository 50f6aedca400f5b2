// ZygoteLink: shoald's side of the zygote (worker/zygote.h), the process that forks ready
// workers. Owns the zygote's pid and socket and the fork requests in flight; restarts a
// dead zygote with capped backoff. While there is no live zygote, callers start workers
// with exec instead (alive() says which).
// Thread-safety: loop thread only; callbacks run on the loop thread.
#pragma once

#include <sys/types.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "supervisor/async_channel.h"

namespace shoal {

class ZygoteLink {
 public:
  explicit ZygoteLink(boost::asio::io_context& io);
  ~ZygoteLink();
  ZygoteLink(const ZygoteLink&) = delete;
  ZygoteLink& operator=(const ZygoteLink&) = delete;

  // Starts `binary` with `args` (which include --zygote); a restart after a death reuses them.
  void Start(std::string binary, std::vector<std::string> args);
  bool alive() const { return pid_ > 0 && !gone_; }
  pid_t pid() const { return alive() ? pid_ : -1; }

  // Asks for a worker for `slot` on `sock` (the worker's end of its socketpair; closed
  // here). `done` gets the worker's pid, or -1 when the zygote could not fork it or died.
  // With `cgroup_procs` (a memory cgroup's cgroup.procs, open for writing) the worker joins
  // that cgroup first thing after the fork, before it runs anything else.
  // A zygote that does not answer within kForkDeadline of being ready (or is not ready
  // within kStartDeadline) is wedged: it is killed (callers fall back to exec) and restarted.
  // `cuda_visible`: the worker's CUDA_VISIBLE_DEVICES (its GPU), set in the child.
  void Fork(int slot, int sock, const std::optional<std::string>& cuda_visible, std::function<void(pid_t)> done,
            std::shared_ptr<OwnedFd> cgroup_procs = nullptr);

  // The reaper found the zygote's exit status. Fork requests in flight get -1.
  void OnExited(const std::string& how);
  // Kills it (the reaper collects it); no restart. For shutdown and for a sandbox change
  // (followed by Start with new arguments).
  void Kill();
  // Stops restarting it after it dies (shutdown).
  void set_stopping() { stopping_ = true; }

 private:
  static constexpr std::chrono::seconds kForkDeadline{10};    // from when it is ready
  static constexpr std::chrono::seconds kStartDeadline{120};  // to become ready
  void OnFrame(const std::string& body);
  void ArmForkDeadline(uint64_t rid);
  void Wedged(const std::string& what);
  void RestartLater();
  void Close(bool kill_it);

  boost::asio::io_context& io_;
  std::string binary_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
  bool gone_ = true;
  bool stopping_ = false;
  bool ready_ = false;  // it said it serves fork requests
  std::shared_ptr<boost::asio::steady_timer> start_timer_;
  std::shared_ptr<AsyncChannel> channel_;
  struct PendingFork {
    std::function<void(pid_t)> done;
    std::shared_ptr<boost::asio::steady_timer> deadline;
  };
  std::map<uint64_t, PendingFork> pending_;  // fork request id ->
  uint64_t next_request_ = 1;
  std::chrono::steady_clock::time_point started_;
  int streak_ = 0;  // consecutive deaths within 10 s of starting
  std::shared_ptr<boost::asio::steady_timer> restart_timer_;
};

}  // namespace shoal
