// MetricsServer: serves the /metrics page over HTTP/1.1 (Boost.Beast) on metrics_address, a
// Unix socket or a TCP port, on shoald's event loop. Other paths are 404, other methods than
// GET and HEAD 405; connections may be kept alive.
//
// It never blocks the loop and no client can make it stop serving others:
//  - every read and write is asynchronous with a deadline: a request must arrive whole
//    within kRequestTimeout of the connection or of the previous reply, a reply must be
//    taken within kWriteTimeout; otherwise the connection is closed;
//  - a request is at most kMaxHeaderBytes of header and kMaxBodyBytes of body (431, 413);
//  - at most kMaxConnections connections; a newcomer past that closes the connection that
//    has waited longest for a request, so a client that opens connections and sends
//    nothing cannot keep a scraper out (the scraper, sending at once, is never the one).
// Knows nothing of shoald's roles: `page` renders the body (supervisor/metrics_page.h).
// Thread-safety: loop thread only.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "shoal/status.h"
#include "supervisor/listen_address.h"

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
  ~MetricsServer();  // Stop()
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds the address (a stale socket file of a dead shoald is removed, a live one or a
  // file that is no socket is left alone and is an error) and starts accepting. Returns
  // where it serves, for logs.
  Result<std::string> Listen();
  // Closes the listening socket (removing the socket file it made) and every connection.
  void Stop();

  // One accepted connection, whatever its socket (Unix or TCP).
  class Connection {
   public:
    virtual ~Connection() = default;
    virtual void Close() = 0;
    MetricsServer* server = nullptr;  // null once the server stopped: nothing to tell it
    uint64_t id = 0;
    bool waiting = false;  // for a request (not writing a reply)
    std::chrono::steady_clock::time_point waiting_since;
  };

  // For connections: the reply to a request, and the end of a connection.
  struct Reply {
    unsigned status = 200;
    std::string content_type, body, allow;
    bool head = false;  // the length of `body` is announced, the body not sent
  };
  Reply Respond(const std::string& method, const std::string& target);
  void Forget(uint64_t id);

 private:
  template <class Protocol>
  void Accept(typename Protocol::acceptor* acceptor);
  // Takes a new connection in, closing the one that waited longest past kMaxConnections.
  bool Admit(const std::shared_ptr<Connection>& c);
  void AcceptLater(std::function<void()> again, const boost::system::error_code& why);
  Result<std::string> ListenUnix();
  Result<std::string> ListenTcp();

  boost::asio::io_context& io_;
  const ListenAddress address_;
  const PageFn page_;
  std::unique_ptr<boost::asio::local::stream_protocol::acceptor> unix_;
  std::unique_ptr<boost::asio::ip::tcp::acceptor> tcp_;
  bool made_socket_file_ = false;
  bool stopped_ = false;
  std::unique_ptr<boost::asio::steady_timer> accept_timer_;
  std::chrono::steady_clock::time_point last_warning_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, std::shared_ptr<Connection>> connections_;
};

}  // namespace shoal
