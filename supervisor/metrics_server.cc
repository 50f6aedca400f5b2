// The /metrics page's routes (supervisor/metrics_server.h).
#include "supervisor/metrics_server.h"

namespace shoal {

namespace {

HttpServer::Limits MetricsLimits() {
  HttpServer::Limits l;
  l.what = "metrics";
  l.max_connections = MetricsServer::kMaxConnections;
  l.max_header_bytes = MetricsServer::kMaxHeaderBytes;
  l.max_body_bytes = MetricsServer::kMaxBodyBytes;
  l.request_timeout = MetricsServer::kRequestTimeout;
  l.write_timeout = MetricsServer::kWriteTimeout;
  return l;
}

}  // namespace

MetricsServer::MetricsServer(boost::asio::io_context& io, ListenAddress address, PageFn page)
    : page_(std::move(page)),
      http_(io, std::move(address), MetricsLimits(),
            [this](HttpServer::Request req, HttpServer::Respond respond) { respond(Respond(req.method, req.target)); }) {}

HttpServer::Reply MetricsServer::Respond(const std::string& method, const std::string& target) const {
  std::string path = target.substr(0, target.find('?'));
  if (path != "/metrics") return HttpServer::Plain(404, "not found: shoald serves /metrics only\n");
  if (method != "GET" && method != "HEAD") {
    return HttpServer::Plain(405, "method not allowed: /metrics takes GET or HEAD\n", "GET, HEAD");
  }
  HttpServer::Reply r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";  // the exposition format's
  r.body = page_();
  r.head = method == "HEAD";
  return r;
}

}  // namespace shoal
