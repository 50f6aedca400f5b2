// The HTTP server under shoald's /metrics and shoal-http (http/server.h).
#include "http/server.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <array>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <optional>
#include <type_traits>

namespace shoal {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using tcp = asio::ip::tcp;

HttpServer::Reply HttpServer::Plain(unsigned status, std::string body, std::string allow) {
  Reply r;
  r.status = status;
  r.content_type = "text/plain; charset=utf-8";
  r.body = std::move(body);
  r.allow = std::move(allow);
  return r;
}

std::string HttpServer::Request::Header(const std::string& lower_name) const {
  auto it = headers.find(lower_name);
  return it == headers.end() ? std::string() : it->second;
}

namespace {

std::string Lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// One connection: reads a request, has it handled, writes its reply, again while both
// sides keep it alive.
template <class Protocol>
class Session : public HttpServer::Connection, public std::enable_shared_from_this<Session<Protocol>> {
 public:
  Session(typename Protocol::socket sock, const HttpServer::Limits& limits, HttpServer::ErrorReply error_reply)
      : stream_(std::move(sock)),
        limits_(limits),
        error_reply_(std::move(error_reply)),
        buffer_(limits.max_header_bytes + kReadBytes) {
    // Beast reads as much as the buffer has room for: without room, 512 bytes a recvmsg
    // (6500 system calls for a 4 MiB body).
    buffer_.reserve(limits.max_header_bytes + kReadBytes);
  }

  void Start() { Read(); }

  void Close() override {
    beast::error_code ec;
    stream_.socket().shutdown(Protocol::socket::shutdown_both, ec);
    stream_.close();
  }

 private:
  static constexpr size_t kReadBytes = 256 * 1024;  // read at once, at most

  void Read() {
    waiting = true;
    waiting_since = std::chrono::steady_clock::now();
    parser_.emplace();
    parser_->header_limit(static_cast<uint32_t>(limits_.max_header_bytes));
    parser_->body_limit(limits_.max_body_bytes);
    stream_.expires_after(limits_.request_timeout);
    // The header first: once it is in, the connection is busy with a request, and a
    // newcomer past max_connections never closes it (an upload in progress is not idle).
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnHeader(ec); });
  }

  void OnHeader(beast::error_code ec) {
    if (ec) return OnRead(ec);
    waiting = false;
    auto body = [self = this->shared_from_this()] {
      http::async_read(self->stream_, self->buffer_, *self->parser_,
                       [self](beast::error_code ec, size_t) { self->OnRead(ec); });
    };
    if (!beast::iequals(parser_->get()[http::field::expect], "100-continue") || parser_->is_done()) return body();
    // curl and others wait (a second) for this before sending a body over 1 MiB.
    continue_.emplace(http::status::continue_, parser_->get().version());
    http::async_write(stream_, *continue_, [self = this->shared_from_this(), body](beast::error_code ec, size_t) {
      if (ec) return self->Finish();
      body();
    });
  }

  void OnRead(beast::error_code ec) {
    waiting = false;
    if (server == nullptr || ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == asio::error::operation_aborted || ec == asio::error::connection_reset || ec == asio::error::eof) {
      return Finish();
    }
    keep_alive_ = false;
    version_ = 11;
    linger_ = true;  // an error while reading: what the client still sends is read and dropped
    if (ec == http::error::header_limit) {
      return Write(error_reply_(431, "request header larger than " + std::to_string(limits_.max_header_bytes) +
                                         " bytes"));
    }
    if (ec == http::error::body_limit) {
      return Write(error_reply_(413, "request body larger than " + std::to_string(limits_.max_body_bytes) +
                                         " bytes (" + limits_.what + "'s limit)"));
    }
    if (ec) return Write(error_reply_(400, "bad request: " + ec.message()));
    linger_ = false;
    auto req = parser_->release();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    HttpServer::Request request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    request.path = request.target.substr(0, request.target.find('?'));
    for (const auto& field : req) request.headers[Lower(std::string(field.name_string()))] = std::string(field.value());
    request.body = std::move(req.body());
    head_ = request.method == "HEAD";
    // The reply may come from another thread: it is carried back to the loop, where the
    // stream lives. The connection stays alive (and unread) until then.
    auto self = this->shared_from_this();
    asio::io_context& io = server->io();
    server->Handle(std::move(request), [self, &io](HttpServer::Reply reply) {
      asio::post(io, [self, reply = std::move(reply)]() mutable { self->Write(std::move(reply)); });
    });
  }

  void Write(HttpServer::Reply reply) {
    response_ = http::response<http::string_body>(static_cast<http::status>(reply.status), version_);
    response_.set(http::field::content_type, reply.content_type);
    if (!reply.allow.empty()) response_.set(http::field::allow, reply.allow);
    for (const auto& [name, value] : reply.headers) response_.set(name, value);
    response_.keep_alive(keep_alive_);
    if (reply.head || head_) {
      response_.content_length(reply.body.size());  // what GET would send; no body
    } else {
      response_.body() = std::move(reply.body);
      response_.prepare_payload();
    }
    stream_.expires_after(limits_.write_timeout);
    http::async_write(stream_, response_,
                      [self = this->shared_from_this()](beast::error_code ec, size_t) { self->OnWritten(ec); });
  }

  void OnWritten(beast::error_code ec) {
    if (!ec && linger_ && server != nullptr) return Linger();
    if (ec || !keep_alive_ || server == nullptr) return Finish();
    response_ = {};
    head_ = false;
    Read();
  }

  // After an error reply to a request whose body was not read (413): closing now would
  // reset the connection, and the client could lose the reply with the bytes it was still
  // sending. Stop sending, read and drop what comes until the client closes, for at most
  // kLingerTime, then close.
  void Linger() {
    beast::error_code ignored;
    stream_.socket().shutdown(Protocol::socket::shutdown_send, ignored);
    if (!linger_until_) linger_until_ = std::chrono::steady_clock::now() + kLingerTime;
    if (std::chrono::steady_clock::now() >= *linger_until_) return Finish();
    stream_.expires_at(*linger_until_);
    stream_.async_read_some(asio::buffer(drain_), [self = this->shared_from_this()](beast::error_code ec, size_t) {
      if (ec || self->server == nullptr) return self->Finish();
      self->Linger();
    });
  }

  void Finish() {
    Close();
    if (server != nullptr) server->Forget(id);
  }

  beast::basic_stream<Protocol> stream_;
  const HttpServer::Limits limits_;  // a copy: a reply may be written after the server is gone
  const HttpServer::ErrorReply error_reply_;  // a copy too
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> response_;
  std::optional<http::response<http::empty_body>> continue_;
  unsigned version_ = 11;
  bool keep_alive_ = false;
  bool linger_ = false;
  static constexpr std::chrono::seconds kLingerTime{5};
  std::optional<std::chrono::steady_clock::time_point> linger_until_;
  std::array<char, 65536> drain_;
  bool head_ = false;
};

bool OutOfDescriptors(const boost::system::error_code& ec) {
  return ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space || ec == asio::error::no_memory ||
         ec.value() == ENFILE;
}

}  // namespace

HttpServer::HttpServer(asio::io_context& io, ListenAddress address, Limits limits, Handler handler,
                       ErrorReply error_reply)
    : io_(io),
      address_(std::move(address)),
      limits_(std::move(limits)),
      handler_(std::move(handler)),
      error_reply_(error_reply ? std::move(error_reply)
                               : [](unsigned status, std::string message) { return Plain(status, message + "\n"); }) {}

HttpServer::~HttpServer() { Stop(); }

Result<std::string> HttpServer::Listen() {
  auto where = address_.unix_socket() ? ListenUnix() : ListenTcp();
  if (!where.ok()) return where;
  if (address_.every_interface) {
    spdlog::warn("{} is served on every interface ({}): anyone who reaches that port can use it", limits_.what,
                 *where);
  }
  return where;
}

Result<std::string> HttpServer::ListenUnix() {
  const std::string& path = address_.path;
  auto fail = [&](const std::string& why) {
    return Status(Code::kIoError, "cannot serve " + limits_.what + " on " + path + ": " + why);
  };
  struct stat st;
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) return fail("it exists and is not a socket; remove it or set another address");
    local::socket probe(io_);
    boost::system::error_code ec;
    probe.connect(local::endpoint(path), ec);  // a Unix socket answers at once
    if (!ec) return fail("another process serves it");
    std::error_code fec;
    std::filesystem::remove(path, fec);  // a dead process's
  }
  std::error_code fec;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), fec);
  try {
    unix_ = std::make_unique<local::acceptor>(io_, local::endpoint(path));
  } catch (const std::exception& e) {
    return fail(e.what());
  }
  made_socket_file_ = true;
  fcntl(unix_->native_handle(), F_SETFD, FD_CLOEXEC);  // no helper it runs gets it either
  Accept<local>(unix_.get());
  return path;
}

Result<std::string> HttpServer::ListenTcp() {
  tcp::endpoint endpoint(asio::ip::make_address(address_.ip), address_.port);
  try {
    tcp_ = std::make_unique<tcp::acceptor>(io_, endpoint, /*reuse_addr=*/true);
  } catch (const boost::system::system_error& e) {
    std::string hint;
    if (e.code() == asio::error::address_family_not_supported) {
      hint = " (shoal.service allows Unix sockets only: add RestrictAddressFamilies=AF_INET AF_INET6 in a drop-in, "
             "systemctl edit shoal, or serve on a Unix socket path)";
    }
    return Status(Code::kIoError, "cannot serve " + limits_.what + " on " + address_.ToString() + ": " +
                                      e.code().message() + hint);
  }
  fcntl(tcp_->native_handle(), F_SETFD, FD_CLOEXEC);
  Accept<tcp>(tcp_.get());
  if (address_.port == 0) return address_.ip + ":" + std::to_string(tcp_->local_endpoint().port());
  return address_.ToString();
}

template <class Protocol>
void HttpServer::Accept(typename Protocol::acceptor* acceptor) {
  acceptor->async_accept([this, acceptor](const boost::system::error_code& ec, typename Protocol::socket sock) {
    if (ec == asio::error::operation_aborted || stopped_) return;
    if (OutOfDescriptors(ec)) return AcceptLater([this, acceptor] { Accept<Protocol>(acceptor); }, ec);
    if (ec) {
      spdlog::warn("{}: accept: {}", limits_.what, ec.message());
    } else {
      if constexpr (std::is_same_v<Protocol, tcp>) {
        // A reply's last segment must not wait for the client's delayed ACK (Nagle): 40 ms
        // a request otherwise.
        boost::system::error_code ignored;
        sock.set_option(tcp::no_delay(true), ignored);
      }
      auto session = std::make_shared<Session<Protocol>>(std::move(sock), limits_, error_reply_);
      if (Admit(session)) session->Start();
    }
    Accept<Protocol>(acceptor);
  });
}

bool HttpServer::Admit(const std::shared_ptr<Connection>& c) {
  if (connections_.size() >= limits_.max_connections) {
    // The one that has waited longest for a request goes: a real client sends its request
    // at once, a connection that sends nothing ages.
    std::shared_ptr<Connection> oldest;
    for (const auto& [id, other] : connections_) {
      if (other->waiting && (!oldest || other->waiting_since < oldest->waiting_since)) oldest = other;
    }
    auto now = std::chrono::steady_clock::now();
    if (now - last_warning_ > std::chrono::seconds(10)) {
      last_warning_ = now;
      spdlog::warn("{}: {} connections (the most); closing the one idle longest for each newcomer (this "
                   "warning at most every 10 s)",
                   limits_.what, connections_.size());
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

void HttpServer::AcceptLater(std::function<void()> again, const boost::system::error_code& why) {
  auto now = std::chrono::steady_clock::now();
  if (now - last_warning_ > std::chrono::seconds(10)) {
    last_warning_ = now;
    spdlog::warn("{}: accept: {}; retrying every 100 ms, this warning at most every 10 s", limits_.what,
                 why.message());
  }
  accept_timer_ = std::make_unique<asio::steady_timer>(io_, std::chrono::milliseconds(100));
  accept_timer_->async_wait([this, again = std::move(again)](const boost::system::error_code& ec) {
    if (!ec && !stopped_) again();
  });
}

void HttpServer::Forget(uint64_t id) { connections_.erase(id); }

void HttpServer::Stop() {
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
