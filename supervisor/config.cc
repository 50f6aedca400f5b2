#include "supervisor/config.h"

#include <cerrno>
#include <fstream>
#include <sstream>

namespace shoal {

namespace {
std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r");
  return s.substr(a, b - a + 1);
}

bool ParseUint(const std::string& v, uint64_t* out) {
  if (v.empty() || v.find_first_not_of("0123456789") != std::string::npos || v.size() > 18) return false;
  *out = std::stoull(v);
  return true;
}
}  // namespace

Status ParseConfig(const std::string& text, const std::string& origin, SupervisorConfig* cfg) {
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    auto hash = line.find('#');
    if (hash != std::string::npos) line.resize(hash);
    line = Trim(line);
    if (line.empty()) continue;
    auto where = origin + ":" + std::to_string(lineno) + ": ";
    auto eq = line.find('=');
    if (eq == std::string::npos) return Status::BadRequest(where + "expected 'key = value', got '" + line + "'");
    std::string key = Trim(line.substr(0, eq));
    std::string value = Trim(line.substr(eq + 1));
    uint64_t n = 0;
    auto number = [&](uint64_t max) -> Status {
      if (!ParseUint(value, &n) || n > max) {
        return Status::BadRequest(where + key + " takes an integer in [0, " + std::to_string(max) + "], not '" +
                                  value + "'");
      }
      return Status::Ok();
    };
    if (key == "socket") {
      cfg->socket_path = value;
    } else if (key == "workers") {
      if (auto st = number(1024); !st.ok()) return st;
      if (n == 0) return Status::BadRequest(where + "workers must be at least 1");
      cfg->workers = static_cast<int>(n);
    } else if (key == "interpreters") {
      if (auto st = number(64); !st.ok()) return st;
      if (n == 0) return Status::BadRequest(where + "interpreters must be at least 1");
      cfg->interpreters = static_cast<int>(n);
    } else if (key == "interpreter_cache") {
      cfg->interpreter_cache = value;
    } else if (key == "timeout_ms") {
      if (auto st = number(uint64_t{1} << 40); !st.ok()) return st;
      cfg->default_timeout_ms = n;
    } else if (key == "kill_grace_ms") {
      if (auto st = number(uint64_t{1} << 40); !st.ok()) return st;
      cfg->kill_grace_ms = n;
    } else if (key == "drain_grace_ms") {
      if (auto st = number(uint64_t{1} << 40); !st.ok()) return st;
      cfg->drain_grace_ms = n;
    } else if (key == "unload_grace_ms") {
      if (auto st = number(uint64_t{1} << 40); !st.ok()) return st;
      cfg->unload_grace_ms = n;
    } else if (key == "max_queue") {
      if (auto st = number(uint64_t{1} << 24); !st.ok()) return st;
      cfg->max_queue = n;
    } else if (key == "crash_loop_limit") {
      if (auto st = number(1000); !st.ok()) return st;
      if (n == 0) return Status::BadRequest(where + "crash_loop_limit must be at least 1");
      cfg->crash_loop_limit = static_cast<int>(n);
    } else if (key == "crash_window_s") {
      if (auto st = number(uint64_t{1} << 30); !st.ok()) return st;
      cfg->crash_window_s = n;
    } else if (key == "max_jobs_per_worker") {
      if (auto st = number(uint64_t{1} << 40); !st.ok()) return st;
      cfg->max_jobs_per_worker = n;
    } else if (key == "worker_memory_mb") {
      if (auto st = number(uint64_t{1} << 30); !st.ok()) return st;
      cfg->sandbox.address_space_bytes = n << 20;
    } else if (key == "worker_cpu_seconds") {
      if (auto st = number(uint64_t{1} << 30); !st.ok()) return st;
      cfg->sandbox.cpu_seconds = n;
    } else if (key == "worker_open_files") {
      if (auto st = number(uint64_t{1} << 20); !st.ok()) return st;
      cfg->sandbox.open_files = n;
    } else if (key == "worker_network" || key == "seccomp" || key == "zygote") {
      if (value != "yes" && value != "no") return Status::BadRequest(where + key + " takes yes or no");
      bool yes = value == "yes";
      if (key == "worker_network") cfg->sandbox.allow_network = yes;
      if (key == "seccomp") cfg->sandbox.seccomp = yes;
      if (key == "zygote") cfg->zygote = yes;
    } else if (key == "admin_group") {
      cfg->admin_group = value;
    } else if (key == "model_repository") {
      cfg->model_repository = value;
    } else if (key == "worker_binary") {
      cfg->worker_binary = value;
    } else if (key == "model") {
      auto meq = value.find('=');
      if (meq == std::string::npos || meq == 0 || meq + 1 == value.size()) {
        return Status::BadRequest(where + "model takes NAME=ARCHIVE, not '" + value + "'");
      }
      cfg->models.emplace_back(Trim(value.substr(0, meq)), Trim(value.substr(meq + 1)));
    } else if (key == "log_level") {
      static const char* kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};
      bool ok = false;
      for (const char* l : kLevels) ok = ok || value == l;
      if (!ok) return Status::BadRequest(where + "log_level must be trace|debug|info|warn|error|critical|off");
      cfg->log_level = value;
    } else {
      return Status::BadRequest(where + "unknown key '" + key + "' (see /etc/shoal/shoald.conf for the keys)");
    }
  }
  return Status::Ok();
}

Status LoadConfigFile(const std::string& path, SupervisorConfig* cfg) {
  std::ifstream f(path);
  if (!f) return Status::FromErrno("cannot read configuration file " + path, errno);
  std::stringstream ss;
  ss << f.rdbuf();
  return ParseConfig(ss.str(), path, cfg);
}

}  // namespace shoal
