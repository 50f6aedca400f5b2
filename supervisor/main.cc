// shoald: the shoal supervisor daemon. See docs/architecture.md.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "package_format/archive_reader.h"
#include "protocol/paths.h"
#include "supervisor/config.h"
#include "supervisor/supervisor.h"
#include "supervisor/systemd.h"

namespace {

const char kUsage[] =
    "usage: shoald [--config FILE] [--socket PATH] [--workers N] [--interpreters K]\n"
    "              [--model NAME=ARCHIVE]...\n"
    "              [--timeout-ms MS] [--kill-grace-ms MS] [--max-queue N]\n"
    "              [--worker-binary PATH] [--log-level trace|debug|info|warn|error]\n"
    "\n"
    "  --config FILE       read this configuration file first (see /etc/shoal/shoald.conf);\n"
    "                      the other options override it\n"
    "  --socket PATH       client socket (default: $SHOAL_SOCKET, else /run/shoal/shoal.sock\n"
    "                      for root, else $XDG_RUNTIME_DIR/shoal/shoal.sock)\n"
    "  --workers N         worker processes (default 2)\n"
    "  --interpreters K    Python interpreters per worker, each with its own GIL (default 1)\n"
    "  --interpreter-cache DIR  private library copies for K > 1 (default: runtime folder)\n"
    "  --model NAME=PATH   load this archive at start-up (repeatable)\n"
    "  --timeout-ms MS     deadline of jobs that give none (default 60000; 0 = none)\n"
    "  --kill-grace-ms MS  a worker still running a timed-out job is killed after this (2000)\n"
    "  --max-queue N       queued jobs beyond this are answered OVERLOADED (1024)\n"
    "  --drain-grace-ms MS on SIGTERM, running jobs get this long to finish (10000)\n"
    "  --admin-group NAME  members may load and unload models (besides root and shoald's user)\n"
    "  --max-jobs-per-worker N  recycle a worker after N jobs (0 = never)\n"
    "  --crash-loop-limit N     crashes within crash_window_s that mark a model failed (3)\n"
    "  --worker-memory-mb MB    address-space limit of each worker (0 = none)\n"
    "  --worker-cpu-seconds S   CPU-time limit of each worker (0 = none)\n"
    "  --no-zygote              exec every worker instead of forking it from the zygote\n"
    "\n"
    "SIGTERM drains and exits; SIGHUP re-reads --config (workers, limits, sandbox).\n"
    "\n"
    "Under systemd, shoald takes its listening socket from socket activation (LISTEN_FDS) and\n"
    "reports READY=1 once the configured models serve (NOTIFY_SOCKET, WATCHDOG_USEC).\n";

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
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoald[%P] %l: %v");
  for (int i = 1; i + 1 < argc; ++i) {  // the file first, so that options override it
    if (std::string(argv[i]) == "--config") {
      if (auto st = shoal::LoadConfigFile(argv[i + 1], &cfg); !st.ok()) {
        std::cerr << "shoald: " << st.message() << "\n";
        return 2;
      }
      char* abs = realpath(argv[i + 1], nullptr);
      cfg.config_path = abs ? abs : argv[i + 1];
      free(abs);
    }
  }
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  // Archives named in the file: relative paths are under model_repository.
  for (auto& [name, path] : cfg.models) {
    if (!path.empty() && path[0] != '/' && !cfg.model_repository.empty()) path = cfg.model_repository + "/" + path;
  }
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
    if (a == "--config") {
      ++i;  // already read
    } else if (a == "--socket") {
      cfg.socket_path = value("--socket");
    } else if (a == "--workers") {
      cfg.workers = static_cast<int>(number("--workers"));
    } else if (a == "--interpreters") {
      cfg.interpreters = static_cast<int>(number("--interpreters"));
    } else if (a == "--interpreter-cache") {
      cfg.interpreter_cache = value("--interpreter-cache");
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
    } else if (a == "--drain-grace-ms") {
      cfg.drain_grace_ms = number("--drain-grace-ms");
    } else if (a == "--admin-group") {
      cfg.admin_group = value("--admin-group");
    } else if (a == "--max-jobs-per-worker") {
      cfg.max_jobs_per_worker = number("--max-jobs-per-worker");
    } else if (a == "--crash-loop-limit") {
      cfg.crash_loop_limit = static_cast<int>(std::max<uint64_t>(1, number("--crash-loop-limit")));
    } else if (a == "--worker-memory-mb") {
      cfg.sandbox.address_space_bytes = number("--worker-memory-mb") << 20;
    } else if (a == "--worker-cpu-seconds") {
      cfg.sandbox.cpu_seconds = number("--worker-cpu-seconds");
    } else if (a == "--no-zygote") {
      cfg.zygote = false;
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
  if (auto fd = shoal::TakeListenFd()) cfg.listen_fd = *fd;
  for (const auto& [name, path] : cfg.models) {
    if (path.empty() || path[0] != '/') {
      std::cerr << "shoald: model '" << name << "': archive path '" << path
                << "' must be absolute (or set model_repository)\n";
      return 2;
    }
    if (auto info = shoal::InspectArchiveFile(path); !info.ok()) {
      std::cerr << "shoald: model '" << name << "': " << info.status().message() << "\n";
      return 2;
    }
  }
  boost::asio::io_context io;
  shoal::Supervisor sup(io, cfg);
  if (auto st = sup.Start(); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    return 1;
  }
  io.run();
  spdlog::info("shoald stopped");
  return sup.exit_code();
}
