// shoal-http: the KServe v2 REST front (docs/http.md). shoald starts it when http_address is
// set, handing it one end of a socketpair as fd 3 (--fd 3): a client session shoald
// made itself and marked never-admin. It may also run on its own against shoald's socket
// (--socket PATH), with the rights of whoever runs it.
//
//   shoal-http --listen ADDRESS (--fd FD | --socket PATH) [--threads N]
//              [--max-body-mb N] [--max-connections N]
//
// Once it listens it gives up what it does not need (http/confine.h): no new connections
// (it reaches shoald only through the session shoald made), no programs, no signals to
// others.
#include <malloc.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>


#include <boost/asio.hpp>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <string>

#include "http/confine.h"
#include "http/kserve_service.h"
#include "http/listen_address.h"
#include "http/server.h"
#include "shoal/client.h"

namespace {

int Usage(const std::string& why) {
  std::cerr << "shoal-http: " << why << "\n"
            << "usage: shoal-http --listen ADDRESS (--fd FD | --socket PATH) [--threads N] "
               "[--max-body-mb N] [--max-connections N]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen, socket_path;
  int shoald_fd = -1;
  size_t threads = 32, max_body_mb = 64, max_connections = 64;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    auto number = [&](size_t* out, size_t lo, size_t hi) {
      const char* v = value();
      char* end = nullptr;
      unsigned long long n = v ? std::strtoull(v, &end, 10) : 0;
      if (!v || *end != '\0' || n < lo || n > hi) return false;
      *out = n;
      return true;
    };
    if (a == "--listen") {
      const char* v = value();
      if (!v) return Usage("--listen needs an address");
      listen = v;
    } else if (a == "--socket") {
      const char* v = value();
      if (!v) return Usage("--socket needs a path");
      socket_path = v;
    } else if (a == "--fd") {
      size_t fd = 0;
      if (!number(&fd, 0, 1 << 20)) return Usage("--fd needs a descriptor number");
      shoald_fd = static_cast<int>(fd);
    } else if (a == "--threads") {
      if (!number(&threads, 1, 1024)) return Usage("--threads takes 1..1024");
    } else if (a == "--max-body-mb") {
      if (!number(&max_body_mb, 1, 1 << 16)) return Usage("--max-body-mb takes 1..65536");
    } else if (a == "--max-connections") {
      if (!number(&max_connections, 1, 1 << 16)) return Usage("--max-connections takes 1..65536");
    } else {
      return Usage("unknown argument " + a);
    }
  }
  if (listen.empty()) return Usage("--listen is required");
  if ((shoald_fd >= 0) == !socket_path.empty()) return Usage("give exactly one of --fd and --socket");
  auto address = shoal::ParseListenAddress(listen, "http_address");
  if (!address.ok()) return Usage(address.status().message());
  signal(SIGPIPE, SIG_IGN);
  // Request and reply bodies are megabytes: glibc would map each afresh (and fault in every
  // page again: 20 ms for 4 MiB on a VM) and unmap it when freed. Kept, they are reused.
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  auto client = shoald_fd >= 0 ? shoal::Client::Adopt(shoald_fd, "shoald (fd " + std::to_string(shoald_fd) + ")")
                               : shoal::Client::Connect(socket_path);
  if (!client.ok()) {
    spdlog::error("shoal-http: {}", client.status().ToString());
    return 1;
  }
  boost::asio::io_context io;
  std::unique_ptr<shoal::KServeService> service;  // its threads start once Landlock is on
  shoal::HttpServer::Limits limits;
  limits.what = "http";
  limits.max_connections = max_connections;
  limits.max_header_bytes = 16384;
  limits.max_body_bytes = max_body_mb << 20;
  limits.request_timeout = std::chrono::seconds(60);
  limits.write_timeout = std::chrono::seconds(60);
  shoal::HttpServer server(
      io, *address, limits,
      [&service](shoal::HttpServer::Request r, shoal::HttpServer::Respond f) {
        service->Handle(std::move(r), std::move(f));
      },
      shoal::KServeService::RefusedReply);
  auto where = server.Listen();
  if (!where.ok()) {
    spdlog::error("shoal-http: {}", where.status().ToString());
    return 1;
  }
  // Listening (its address may be a socket file): from here on no path is opened. Before
  // any thread starts, so that every thread is bound.
  int landlock = 0;
  if (auto st = shoal::ConfineFilesystem(&landlock); !st.ok()) {
    spdlog::error("shoal-http: {}", st.ToString());  // not served unconfined
    return 1;
  }
  if (landlock == 0) spdlog::warn("shoal-http: this kernel has no Landlock: it may open what its user may");
  service = std::make_unique<shoal::KServeService>(client->get(), threads);
  if (auto st = shoal::Confine(); !st.ok()) {
#ifdef SHOAL_HAVE_SECCOMP
    spdlog::error("shoal-http: {}", st.ToString());  // not served unconfined
    return 1;
#else
    spdlog::warn("shoal-http: {}", st.ToString());
#endif
  }
  boost::asio::signal_set signals(io, SIGTERM, SIGINT);
  signals.async_wait([&](const boost::system::error_code&, int) {
    server.Stop();
    io.stop();
  });
  spdlog::info("shoal-http: KServe v2 on {} (Landlock ABI {})", *where, landlock);
  io.run();
  service->Stop();
  return 0;
}
