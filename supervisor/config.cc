// Reading shoald.conf, stacking the layers (defaults < before --config < file < after
// --config) and what a reload keeps (supervisor/config.h). Pure but for reading the file.
#include "supervisor/config.h"

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "protocol/paths.h"
#include "supervisor/options.h"

namespace shoal {

namespace {
std::string Trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r");
  return s.substr(a, b - a + 1);
}

// What a configuration is before any option: SupervisorConfig's defaults, and the socket
// that depends on who runs shoald.
SupervisorConfig Defaults() {
  SupervisorConfig cfg;
  cfg.socket_path = DefaultSocketPath();
  return cfg;
}

Status ApplyAll(const std::vector<Setting>& settings, SupervisorConfig* cfg) {
  for (const Setting& s : settings) {
    if (auto st = ApplySetting(s, cfg); !st.ok()) return st;
  }
  return Status::Ok();
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
    auto eq = line.find('=');
    if (eq == std::string::npos) {
      return Status::BadRequest(origin + ":" + std::to_string(lineno) + ": expected 'key = value', got '" + line +
                                "'");
    }
    Setting s{Trim(line.substr(0, eq)), Trim(line.substr(eq + 1)), origin, lineno};
    if (auto st = ApplySetting(s, cfg); !st.ok()) return st;
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

Result<SupervisorConfig> LoadConfig(const CommandLine& cli) {
  SupervisorConfig cfg = Defaults();
  if (auto st = ApplyAll(cli.defaults, &cfg); !st.ok()) return st;
  if (!cli.config_path.empty()) {
    if (auto st = LoadConfigFile(cli.config_path, &cfg); !st.ok()) return st;
  }
  if (auto st = ApplyAll(cli.overrides, &cfg); !st.ok()) return st;
  // Only the file's archive paths can still be relative (ParseCommandLine made the
  // command line's absolute), and model_repository is final only now.
  for (auto& [name, path] : cfg.models) {
    if (path[0] == '/') continue;
    if (cfg.model_repository.empty()) {
      return Status::BadRequest("model '" + name + "': archive path '" + path +
                                "' must be absolute (or set model_repository)");
    }
    path = cfg.model_repository + "/" + path;
  }
  std::stringstream read_paths(cfg.sandbox.read_paths);
  for (std::string dir; std::getline(read_paths, dir, ':');) {
    if (dir.empty() || dir[0] != '/') {
      return Status::BadRequest("sandbox_read_paths: '" + dir + "' is not an absolute folder (list them with ':')");
    }
  }
  cfg.config_path = cli.config_path;
  cfg.command_line = cli;
  return cfg;
}

SandboxConfig WorkerSandbox(const SupervisorConfig& config, const std::string& tmp_root) {
  SandboxConfig s = config.sandbox;
  auto add = [&s](const std::string& dir) {
    if (!dir.empty()) s.read_paths += (s.read_paths.empty() ? "" : ":") + dir;
  };
  add(config.model_repository);
  for (const auto& [name, path] : config.models) add(std::filesystem::path(path).parent_path().string());
  s.tmp_root = tmp_root;
  return s;
}

Result<Reloaded> ReloadConfig(const SupervisorConfig& running) {
  auto fresh = LoadConfig(running.command_line);
  if (!fresh.ok()) return fresh.status();
  Reloaded r{std::move(*fresh), {}};
  r.config.listen_fd = running.listen_fd;
  const SupervisorConfig defaults = Defaults();
  for (const Option& o : Options()) {
    if (o.reloadable) continue;
    std::string was = o.get(running);
    std::string now = o.get(r.config);
    // shoald works out some defaults as it starts (worker_binary, interpreter_cache, the
    // socket under systemd): a setting still at its default has not changed.
    bool still_default = o.default_text != nullptr && now == o.get(defaults);
    if (now != was && !still_default) r.needs_restart.push_back(std::string(o.key) + " (" + was + " -> " + now + ")");
    o.keep(running, &r.config);
  }
  return r;
}

}  // namespace shoal
