// HttpServer: an HTTP/1.1 server (Boost.Beast) on one ListenAddress, a Unix socket or a TCP
// port, on the caller's io_context. It parses requests, bounds them, and hands each whole
// request to a Handler; what a path means is the handler's business. Used by shoald's
// /metrics (supervisor/metrics_server.h) and by shoal-http's KServe v2 front (http/main.cc).
//
// It never blocks the loop and no client can make it stop serving others:
//  - every read and write is asynchronous with a deadline: a request must arrive whole
//    within Limits::request_timeout of the connection or of the previous reply, a reply
//    must be taken within Limits::write_timeout; otherwise the connection is closed;
//  - a request is at most Limits::max_header_bytes of header and max_body_bytes of body
//    (431, 413, in the handler's format: ErrorReply);
//  - at most Limits::max_connections connections; a newcomer past that closes the
//    connection that has waited longest for a request, so a client that opens connections
//    and sends nothing cannot keep a real client out (one that sends at once is never the
//    one closed);
//  - one request at a time per connection: the next is read once the reply is written.
// A handler may answer later and from any thread (Respond posts to the loop): a slow
// request holds its own connection only.
// Thread-safety: construct, Listen and Stop on the loop thread; the loop runs the rest;
// Respond functions may be called from any thread, once each.
#pragma once

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "http/listen_address.h"
#include "shoal/status.h"

namespace shoal {

class HttpServer {
 public:
  struct Limits {
    std::string what = "http";  // names the server in logs and errors ("metrics")
    size_t max_connections = 16;
    size_t max_header_bytes = 8192;
    size_t max_body_bytes = 4096;
    std::chrono::milliseconds request_timeout{10000};
    std::chrono::milliseconds write_timeout{10000};
  };

  struct Request {
    std::string method;  // "GET"
    std::string target;  // "/v2/models/m?x=1" as sent
    std::string path;    // target without its query
    std::string body;
    std::map<std::string, std::string> headers;  // lower-cased names; the last of a repeated one
    std::string Header(const std::string& lower_name) const;
  };

  struct Reply {
    unsigned status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::string allow;  // for 405
    std::map<std::string, std::string> headers;  // extra ones
    bool head = false;  // the length of `body` is announced, the body not sent
  };
  // A short answer in plain text (errors).
  static Reply Plain(unsigned status, std::string body, std::string allow = {});

  // Called once with the reply; any thread.
  using Respond = std::function<void(Reply)>;
  // Called on the loop for each request; must call `respond` exactly once, now or later.
  using Handler = std::function<void(Request, Respond)>;

  // The reply to a request refused before any handler saw it (431: header too big, 413:
  // body too big, 400: not HTTP), from its status and what was wrong; a server whose
  // handler answers in a format of its own answers these in it too (shoal-http: v2 JSON).
  using ErrorReply = std::function<Reply(unsigned status, std::string message)>;
  // `error_reply` null: Plain.
  HttpServer(boost::asio::io_context& io, ListenAddress address, Limits limits, Handler handler,
             ErrorReply error_reply = nullptr);
  ~HttpServer();  // Stop()
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds the address (a stale socket file of a dead process is removed, a live one or a
  // file that is no socket is left alone and is an error) and starts accepting. Returns
  // where it serves, for logs.
  Result<std::string> Listen();
  // Closes the listening socket (removing the socket file it made) and every connection.
  void Stop();
  const Limits& limits() const { return limits_; }

  // One accepted connection, whatever its socket (Unix or TCP).
  class Connection {
   public:
    virtual ~Connection() = default;
    virtual void Close() = 0;
    HttpServer* server = nullptr;  // null once the server stopped: nothing to tell it
    uint64_t id = 0;
    bool waiting = false;  // for a request (not handling one or writing a reply)
    std::chrono::steady_clock::time_point waiting_since;
  };
  // For connections.
  void Handle(Request request, Respond respond) { handler_(std::move(request), std::move(respond)); }
  void Forget(uint64_t id);
  boost::asio::io_context& io() { return io_; }

 private:
  template <class Protocol>
  void Accept(typename Protocol::acceptor* acceptor);
  // Takes a new connection in, closing the one that waited longest past max_connections.
  bool Admit(const std::shared_ptr<Connection>& c);
  void AcceptLater(std::function<void()> again, const boost::system::error_code& why);
  Result<std::string> ListenUnix();
  Result<std::string> ListenTcp();

  boost::asio::io_context& io_;
  const ListenAddress address_;
  const Limits limits_;
  const Handler handler_;
  const ErrorReply error_reply_;
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
