// MetricsServer: serves the /metrics page on metrics_address through an HttpServer
// (http/server.h: connections, their bounds and deadlines). Other paths are 404, other
// methods than GET and HEAD 405.
// Knows nothing of shoald's roles: `page` renders the body (supervisor/metrics_page.h).
// Thread-safety: loop thread only.
#pragma once

#include <boost/asio.hpp>
#include <functional>
#include <string>

#include "http/listen_address.h"
#include "http/server.h"
#include "shoal/status.h"

namespace shoal {

class MetricsServer {
 public:
  static constexpr size_t kMaxConnections = 16;
  static constexpr size_t kMaxHeaderBytes = 8192;
  static constexpr size_t kMaxBodyBytes = 4096;
  static constexpr std::chrono::seconds kRequestTimeout{10};
  static constexpr std::chrono::seconds kWriteTimeout{10};

  using PageFn = std::function<std::string()>;
  // `page` is called on the loop for each GET /metrics; it must stay callable while the
  // server lives.
  MetricsServer(boost::asio::io_context& io, ListenAddress address, PageFn page);
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // HttpServer::Listen: where it serves, for logs.
  Result<std::string> Listen() { return http_.Listen(); }
  void Stop() { http_.Stop(); }

  // The answer to `method` on `target`.
  HttpServer::Reply Respond(const std::string& method, const std::string& target) const;

 private:
  const PageFn page_;
  HttpServer http_;
};

}  // namespace shoal
