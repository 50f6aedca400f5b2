// The /metrics HTTP server (supervisor/metrics_server.h).
#include "supervisor/metrics_server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cerrno>
#include <filesystem>
#include <optional>

namespace shoal {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

namespace {

// A short answer in plain text (errors).
MetricsServer::Reply Plain(unsigned status, std::string body, std::string allow = {}) {
  MetricsServer::Reply r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = std::move(body);
  r.allow = std::move(allow);
  return r;
}

// One connection: reads a request, writes its reply, again while both sides keep it alive.
template <class Protocol>
class Session : public MetricsServer::Connection, public std::enable_shared_from_this<Session<Protocol>> {
 public:
  explicit Session(typename Protocol::socket sock) : stream_(std::move(sock)) {}

  void Start() { Read(); }

  void Close() override {
    beast::error_code ec;
    stream_.socket().shutdown(Protocol::socket::shutdown_both, ec);
    stream_.close();
  }

 private:
  void Read() {
    waiting = true;
    waiting_since = std::chrono::steady_clock::now();
    parser_.emplace();
    parser_->header_limit(MetricsServer::kMaxHeaderBytes);
    parser_->body_limit(MetricsServer::kMaxBodyBytes);
    stream_.expires_after(MetricsServer::kRequestTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    waiting = false;
    if (server == nullptr || ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset || ec == asio::error::eof) {
      return Finish();
    }
    MetricsServer::Reply reply;
    keep_alive_ = false;
    unsigned version = 11;
    if (ec == http::error::header_limit) {
      reply = Plain(431, "request header larger than 8192 bytes\n");
    } else if (ec == http::error::body_limit) {
      reply = Plain(413, "request body larger than 4096 bytes\n");
    } else if (ec) {
      reply = Plain(400, "bad request: " + ec.message() + "\n");
    } else {
      const auto& req = parser_->get();
      version = req.version();
      keep_alive_ = req.keep_alive();
      reply = server->Respond(std::string(req.method_string()), std::string(req.target()));
    }
    response_ = http::response<http::string_body>(static_cast<http::status>(reply.status), version);
    response_.set(http::field::content_type, reply.content_type);
    if (!reply.allow.empty()) response_.set(http::field::allow, reply.allow);
    response_.keep_alive(keep_alive_);
    if (reply.head) {
      response_.content_length(reply.body.size());  // what GET would send; no body
    } else {
      response_.body() = std::move(reply.body);
      response_.prepare_payload();
    }
    stream_.expires_after(MetricsServer::kWriteTimeout);
    http::async_write(stream_, response_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnWritten(ec); });
  }

  void OnWritten(beast::error_code ec) {
    if (ec || !keep_alive_ || server == nullptr) return Finish();
    response_ = {};
    Read();
  }

  void Finish() {
    Close();
    if (server != nullptr) server->Forget(id);
  }

  beast::basic_stream<Protocol> stream_;
  beast::flat_buffer buffer_{MetricsServer::kMaxHeaderBytes + MetricsServer::kMaxBodyBytes};
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  bool keep_alive_ = false;
};

bool OutOfDescriptors(const boost::system::error_code& ec) {
  return ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space || ec == asio::error::no_memory ||
         ec.value() == ENFILE;
}

}  // namespace

MetricsServer::MetricsServer(asio::io_context& io, ListenAddress address, PageFn page)
    : io_(io), address_(std::move(address)), page_(std::move(page)) {}

MetricsServer::~MetricsServer() { Stop(); }

Result<std::string> MetricsServer::Listen() {
  auto where = address_.unix_socket() ? ListenUnix() : ListenTcp();
  if (!where.ok()) return where;
  if (address_.every_interface) {
    spdlog::warn("metrics are served on every interface ({}): anyone who reaches that port reads them", *where);
  }
  return where;
}

Result<std::string> MetricsServer::ListenUnix() {
  const std::string& path = address_.path;
  auto fail = [&](const std::string& why) {
    return Status(Code::kIoError, "cannot serve metrics on " + path + ": " + why);
  };
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("it exists and is not a socket; remove it or set another metrics_address");
    local::socket probe(io_);
    boost::system::error_code ec;
    probe.connect(local::endpoint(path), ec);  // a Unix socket answers at once
    if (!ec) return fail("another process serves it");
    std::error_code fec;
    std::filesystem::remove(path, fec);  // a dead shoald's
  }
  std::error_code fec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), fec);
  try {
    unix_ = std::make_unique<local::acceptor>(io_, local::endpoint(path));
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  made_socket_file_ = true;
  fcntl(unix_->native_handle(), F_SETFD, FD_CLOEXEC);  // no helper shoald runs gets it either
  Accept<local>(unix_.get());
  return path;
}

Result<std::string> MetricsServer::ListenTcp() {
  tcp::endpoint endpoint(asio::ip::make_address(address_.ip), address_.port);
  try {
    tcp_ = std::make_unique<tcp::acceptor>(io_, endpoint, /*reuse_addr=*/true);
  } catch (const boost::system::system_error& e) {
    std::string hint;
    if (e.code() == asio::error::address_family_not_supported) {
      hint = " (shoal.service allows Unix sockets only: add RestrictAddressFamilies=AF_INET AF_INET6 in a drop-in, "
             "systemctl edit shoal, or serve metrics on a Unix socket path)";
    }
    return Status(Code::kIoError, "cannot serve metrics on " + address_.ToString() + ": " + e.code().message() + hint);
  }
  fcntl(tcp_->native_handle(), F_SETFD, FD_CLOEXEC);
  Accept<tcp>(tcp_.get());
  return address_.ToString();
}

template <class Protocol>
void MetricsServer::Accept(typename Protocol::acceptor* acceptor) {
  acceptor->async_accept([this, acceptor](const boost::system::error_code& ec, typename Protocol::socket sock) {
    if (ec == asio::error::operation_aborted || stopped_) return;
    if (OutOfDescriptors(ec)) return AcceptLater([this, acceptor] { Accept<Protocol>(acceptor); }, ec);
    if (ec) {
      spdlog::warn("metrics: accept: {}", ec.message());
    } else {
      auto session = std::make_shared<Session<Protocol>>(std::move(sock));
      if (Admit(session)) session->Start();
    }
    Accept<Protocol>(acceptor);
  });
}

bool MetricsServer::Admit(const std::shared_ptr<Connection>& c) {
  if (connections_.size() >= kMaxConnections) {
    // The one that has waited longest for a request goes: a scraper sends its request at
    // once, a connection that sends nothing ages.
    std::shared_ptr<Connection> oldest;
    for (const auto& [id, other] : connections_) {
      if (other->waiting && (!oldest || other->waiting_since < oldest->waiting_since)) oldest = other;
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_warning_ > std::chrono::seconds(10)) {
      last_warning_ = now;
      spdlog::warn("metrics: {} connections (the most); closing the one idle longest for each newcomer (this "
                   "warning at most every 10 s)",
                   connections_.size());
    }
    if (!oldest) {  // every one is being answered now: the newcomer is turned away, and may retry
      c->Close();
      return false;
    }
    Forget(oldest->id);
    oldest->server = nullptr;
    oldest->Close();
  }
  c->id = next_id_++;
  c->server = this;
  connections_[c->id] = c;
  return true;
}

void MetricsServer::AcceptLater(std::function<void()> again, const boost::system::error_code& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_warning_ > std::chrono::seconds(10)) {
    last_warning_ = now;
    spdlog::warn("metrics: accept: {}; retrying every 100 ms, this warning at most every 10 s", why.message());
  }
  accept_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(100));
  accept_timer_->async_wait([this, again = std::move(again)](const boost::system::error_code& ec) {
    if (!ec && !stopped_) again();
  });
}

MetricsServer::Reply MetricsServer::Respond(const std::string& method, const std::string& target) {
  std::string path = target.substr(0, target.find('?'));
  if (path != "/metrics") return Plain(404, "not found: shoald serves /metrics only\n");
  if (method != "GET" && method != "HEAD") return Plain(405, "method not allowed: /metrics takes GET or HEAD\n", "GET, HEAD");
  Reply r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";  // the exposition format's
  r.body = page_();
  r.head = method == "HEAD";
  return r;
}

void MetricsServer::Forget(uint64_t id) { connections_.erase(id); }

void MetricsServer::Stop() {
  if (stopped_) return;
  stopped_ = true;
  boost::system::error_code ec;
  if (accept_timer_) accept_timer_->cancel();
  if (unix_) unix_->close(ec);
  if (tcp_) tcp_->close(ec);
  if (made_socket_file_) {
    std::error_code fec;
    std::filesystem::remove(address_.path, fec);
  }
  auto connections = std::move(connections_);
  connections_.clear();
  for (auto& [id, c] : connections) {
    c->server = nullptr;
    c->Close();
  }
}

}  // namespace shoal
