// HttpFront: shoal-http, the KServe v2 REST front (http/main.cc, docs/http.md), as a child of
// shoald. Where http_address is set it starts shoal-http (next to shoald) with one end of a
// socketpair as fd 3; the other end becomes a client session that ClientFront serves and
// that is never an admin's, whatever its uid: HTTP reaches models only as an ordinary
// client does (health, metadata, infer), never load or unload. HTTP parsing and JSON run in
// that process, not in shoald: a bug there costs the front, which is started again, not
// the supervisor. It is restarted after it exits: 1 s later, doubling up to 30 s while it
// keeps dying within 60 s of its start.
// Owns the child's pid and its restart timer; borrows the front.
// Thread-safety: loop thread only.
#pragma once

#include <sys/types.h>

#include <boost/asio.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "shoal/status.h"
#include "supervisor/client_front.h"
#include "supervisor/config.h"

namespace shoal {

class HttpFront {
 public:
  static constexpr std::chrono::milliseconds kFirstBackoff{1000};
  static constexpr std::chrono::milliseconds kMaxBackoff{30000};
  static constexpr std::chrono::seconds kStable{60};

  // `binary`: the shoal-http executable.
  HttpFront(boost::asio::io_context& io, const SupervisorConfig& config, ClientFront* front, std::string binary);
  HttpFront(const HttpFront&) = delete;
  HttpFront& operator=(const HttpFront&) = delete;

  // Starts shoal-http (an error when it cannot be started at all).
  Status Start();
  // Whether `pid` was shoal-http; if so it is gone (`wait_status` as from waitpid): logged,
  // and started again unless stopping.
  bool OnExited(pid_t pid, int wait_status);
  // Shutdown: SIGTERM to shoal-http, which is not started again.
  void Stop();
  pid_t pid() const { return pid_; }

 private:
  Status Spawn();
  void RestartLater(std::chrono::milliseconds delay);

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  ClientFront* front_;
  const std::string binary_;
  pid_t pid_ = -1;
  std::chrono::steady_clock::time_point started_;
  std::chrono::milliseconds backoff_ = kFirstBackoff;
  std::unique_ptr<boost::asio::steady_timer> restart_timer_;
  bool stopping_ = false;
};

}  // namespace shoal
