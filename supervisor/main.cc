// shoald: the shoal supervisor daemon. See docs/architecture.md.
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "supervisor/supervisor.h"

namespace {

const char kUsage[] =
    "usage: shoald [--socket PATH] [--workers N] [--model NAME=ARCHIVE]...\n"
    "              [--timeout-ms MS] [--kill-grace-ms MS] [--max-queue N]\n"
    "              [--worker-binary PATH] [--log-level trace|debug|info|warn|error]\n"
    "\n"
    "  --socket PATH       client socket (default: $SHOAL_SOCKET, else /run/shoal/shoal.sock\n"
    "                      for root, else $XDG_RUNTIME_DIR/shoal/shoal.sock)\n"
    "  --workers N         worker processes (default 2)\n"
    "  --model NAME=PATH   load this archive at start-up (repeatable)\n"
    "  --timeout-ms MS     deadline of jobs that give none (default 60000; 0 = none)\n"
    "  --kill-grace-ms MS  a worker still running a timed-out job is killed after this (2000)\n"
    "  --max-queue N       queued jobs beyond this are answered OVERLOADED (1024)\n";

bool ParseUint(const char* s, uint64_t* out) {
  char* end = nullptr;
  errno = 0;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-') return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  shoal::SupervisorConfig cfg;
  cfg.socket_path = shoal::DefaultSocketPath();
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::cerr << "shoald: " << name << " needs a value\n" << kUsage;
        std::exit(2);
      }
      return argv[++i];
    };
    auto number = [&](const char* name) -> uint64_t {
      const char* v = value(name);
      uint64_t n = 0;
      if (!ParseUint(v, &n)) {
        std::cerr << "shoald: " << name << " takes a non-negative integer, not '" << v << "'\n";
        std::exit(2);
      }
      return n;
    };
    if (a == "--socket") {
      cfg.socket_path = value("--socket");
    } else if (a == "--workers") {
      cfg.workers = static_cast<int>(number("--workers"));
    } else if (a == "--model") {
      std::string spec = value("--model");
      auto eq = spec.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size()) {
        std::cerr << "shoald: --model takes NAME=ARCHIVE, not '" << spec << "'\n";
        return 2;
      }
      std::string path = spec.substr(eq + 1);
      char* abs = realpath(path.c_str(), nullptr);
      if (abs == nullptr) {
        std::cerr << "shoald: model '" << spec.substr(0, eq) << "': cannot open archive " << path << ": "
                  << std::strerror(errno) << "\n";
        return 2;
      }
      cfg.models.emplace_back(spec.substr(0, eq), abs);
      free(abs);
    } else if (a == "--timeout-ms") {
      cfg.default_timeout_ms = number("--timeout-ms");
    } else if (a == "--kill-grace-ms") {
      cfg.kill_grace_ms = number("--kill-grace-ms");
    } else if (a == "--max-queue") {
      cfg.max_queue = number("--max-queue");
    } else if (a == "--worker-binary") {
      cfg.worker_binary = value("--worker-binary");
    } else if (a == "--log-level") {
      spdlog::set_level(spdlog::level::from_str(value("--log-level")));
    } else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      return 0;
    } else {
      std::cerr << "shoald: unknown option '" << a << "'\n" << kUsage;
      return 2;
    }
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoald[%P] %l: %v");
  boost::asio::io_context io;
  shoal::Supervisor sup(io, cfg);
  if (auto st = sup.Start(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  io.run();
  spdlog::info("shoald stopped");
  return 0;
}
