#include "supervisor/config.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("config file sets every key and keeps defaults otherwise", "[config]") {
  SupervisorConfig cfg;
  auto st = ParseConfig(
      "# comment\n"
      "workers = 4   # trailing comment\n"
      "timeout_ms=500\n"
      "admin_group = ops\n"
      "model = a = /m/a.pt\n"
      "model = b=/m/b.pt\n"
      "\n"
      "log_level = warn\n",
      "test.conf", &cfg);
  REQUIRE(st.ok());
  REQUIRE(cfg.workers == 4);
  REQUIRE(cfg.default_timeout_ms == 500);
  REQUIRE(cfg.kill_grace_ms == 2000);  // default kept
  REQUIRE(cfg.admin_group == "ops");
  REQUIRE(cfg.models.size() == 2);
  REQUIRE(cfg.models[0] == std::make_pair(std::string("a"), std::string("/m/a.pt")));
  REQUIRE(cfg.log_level == "warn");
}

TEST_CASE("config errors name the file, the line and the key", "[config]") {
  SupervisorConfig cfg;
  auto st = ParseConfig("workers = 2\nworkers = many\n", "/etc/shoal/shoald.conf", &cfg);
  REQUIRE(st.code() == Code::kBadRequest);
  REQUIRE(st.message() == "/etc/shoal/shoald.conf:2: workers takes an integer in [0, 1024], not 'many'");
  REQUIRE(ParseConfig("wrokers = 2\n", "f", &cfg).message().find("unknown key 'wrokers'") != std::string::npos);
  REQUIRE(ParseConfig("just words\n", "f", &cfg).message().find("expected 'key = value'") != std::string::npos);
  REQUIRE(ParseConfig("model = nopath\n", "f", &cfg).message().find("NAME=ARCHIVE") != std::string::npos);
  REQUIRE(ParseConfig("workers = 0\n", "f", &cfg).message().find("at least 1") != std::string::npos);
  REQUIRE_FALSE(ParseConfig("log_level = loud\n", "f", &cfg).ok());
}

TEST_CASE("the shipped shoald.conf parses", "[config]") {
  SupervisorConfig cfg;
  auto st = LoadConfigFile(SHOAL_SOURCE_DIR "/systemd/shoald.conf", &cfg);
  REQUIRE(st.ok());
  REQUIRE(cfg.admin_group == "shoal-admin");
  REQUIRE(cfg.models.empty());
}

// ---- one table for the file and the command line (supervisor/options.h) ----

#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <vector>

#include "supervisor/options.h"

namespace {

Result<CommandLine> Args(std::vector<const char*> args) {
  args.insert(args.begin(), "shoald");
  return ParseCommandLine(static_cast<int>(args.size()), args.data());
}

// A configuration file in a fresh folder, removed with it.
struct ConfFile {
  std::filesystem::path dir;
  std::string path;
  explicit ConfFile(const std::string& text) {
    dir = std::filesystem::temp_directory_path() / ("shoal-config-test-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    path = (dir / "shoald.conf").string();
    Write(text);
  }
  ~ConfFile() { std::filesystem::remove_all(dir); }
  void Write(const std::string& text) const { std::ofstream(path) << text; }
};

}  // namespace

TEST_CASE("a bad value gets the same words from the file and from the command line", "[config]") {
  struct Case {
    const char* key;
    const char* value;
    const char* why;
  };
  const Case cases[] = {
      {"workers", "many", "takes an integer in [0, 1024], not 'many'"},
      {"workers", "0", "must be at least 1"},
      {"workers", "-1", "takes an integer in [0, 1024], not '-1'"},
      {"interpreters", "65", "takes an integer in [0, 64], not '65'"},
      {"crash_loop_limit", "0", "must be at least 1"},
      {"zygote", "maybe", "takes yes or no, not 'maybe'"},
      {"log_level", "loud", "must be trace|debug|info|warn|error|critical|off, not 'loud'"},
      {"model", "nopath", "takes NAME=ARCHIVE, not 'nopath'"},
      {"model", "=a.pt", "takes NAME=ARCHIVE, not '=a.pt'"},
      {"worker_memory_mb", "lots", "takes an integer in [0, 1073741824] or auto, not 'lots'"},
      {"spin_us", "fast", "takes an integer in [0, 10000] or auto, not 'fast'"},
      {"spin_us", "10001", "takes an integer in [0, 10000] or auto, not '10001'"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.key, c.value);
    SupervisorConfig cfg;
    auto file = ParseConfig(std::string(c.key) + " = " + c.value + "\n", "shoald.conf", &cfg);
    REQUIRE(file.message() == "shoald.conf:1: " + std::string(c.key) + " " + c.why);
    std::string flag = FindOption(c.key)->Flag();
    auto cli = Args({flag.c_str(), c.value});
    REQUIRE(cli.status().code() == Code::kBadRequest);
    REQUIRE(cli.status().message() == flag + " " + c.why);
  }
}

TEST_CASE("unknown keys name the file and line, unknown flags the flag", "[config]") {
  SupervisorConfig cfg;
  auto st = ParseConfig("workers = 2\n\nwrokers = 2\n", "/etc/shoal/shoald.conf", &cfg);
  REQUIRE(st.message().rfind("/etc/shoal/shoald.conf:3: unknown key 'wrokers'", 0) == 0);
  REQUIRE(Args({"--wrokers", "2"}).status().message().find("unrecognised option '--wrokers'") != std::string::npos);
  // no abbreviations, and no flag for what only the command line has
  REQUIRE_FALSE(Args({"--work", "2"}).ok());
  REQUIRE(ParseConfig("config = x\n", "f", &cfg).message().find("unknown key 'config'") != std::string::npos);
  REQUIRE(Args({"--workers"}).status().message().find("'--workers' is missing") != std::string::npos);
  REQUIRE(Args({"--admin-group", "--workers", "2"}).status().message().find("'--admin-group' is missing") !=
          std::string::npos);
  REQUIRE(Args({"stray"}).status().message().find("unexpected argument 'stray'") != std::string::npos);
  REQUIRE(Args({"--config", "a", "--config", "b"}).status().message().find("--config given twice") !=
          std::string::npos);
}

TEST_CASE("every flag is its key with dashes, and both forms of a value work", "[config]") {
  auto cli = Args({"--max-jobs-per-worker=7", "--worker-address-space-mb", "64", "--no-zygote", "--seccomp", "no",
                   "--admin-group", "", "--log-level", "debug", "--timeout-ms", "0", "--worker-memory-mb", "300",
                   "--no-worker-memory-cgroup"});
  REQUIRE(cli.ok());
  auto cfg = LoadConfig(*cli);
  REQUIRE(cfg.ok());
  REQUIRE(cfg->max_jobs_per_worker == 7);
  REQUIRE(cfg->sandbox.address_space_bytes == uint64_t{64} << 20);
  REQUIRE(cfg->worker_memory_mb == 300);
  REQUIRE_FALSE(cfg->worker_memory_cgroup);
  REQUIRE_FALSE(cfg->zygote);
  REQUIRE_FALSE(cfg->sandbox.seccomp);
  REQUIRE(cfg->admin_group.empty());
  REQUIRE(cfg->log_level == "debug");
  REQUIRE(cfg->default_timeout_ms == 0);
  REQUIRE(cfg->config_path.empty());
}

TEST_CASE("defaults, then options before --config, then the file, then options after it", "[config]") {
  ConfFile f("workers = 3\nmax_queue = 4\nkill_grace_ms = 6\n");
  auto cli = Args({"--workers", "5", "--max-queue", "7", "--drain-grace-ms", "8", "--config", f.path.c_str(),
                   "--max-queue", "9", "--timeout-ms", "11"});
  REQUIRE(cli.ok());
  REQUIRE(cli->config_path == f.path);
  auto cfg = LoadConfig(*cli);
  REQUIRE(cfg.ok());
  REQUIRE(cfg->workers == 3);              // the file over an option before --config
  REQUIRE(cfg->drain_grace_ms == 8);       // an option before --config over the default
  REQUIRE(cfg->max_queue == 9);            // an option after --config over the file
  REQUIRE(cfg->default_timeout_ms == 11);
  REQUIRE(cfg->kill_grace_ms == 6);        // the file over the default
  REQUIRE(cfg->unload_grace_ms == 5000);   // the default
  REQUIRE(cfg->config_path == f.path);
  // without a file in between, every option simply applies
  auto plain = LoadConfig(*Args({"--workers", "5", "--workers", "6"}));
  REQUIRE(plain.ok());
  REQUIRE(plain->workers == 6);
  // an unreadable file is an error, not an empty configuration
  auto missing = LoadConfig(*Args({"--config", "/nonexistent/shoald.conf"}));
  REQUIRE(missing.status().message().find("cannot read configuration file /nonexistent/shoald.conf") !=
          std::string::npos);
}

TEST_CASE("relative archive paths: the file's under model_repository, the command line's here", "[config]") {
  ConfFile f("model_repository = /srv/models\nmodel = a = a.pt\nmodel = b=/abs/b.pt\n");
  auto cfg = LoadConfig(*Args({"--config", f.path.c_str(), "--model", "c=sub/c.pt"}));
  REQUIRE(cfg.ok());
  REQUIRE(cfg->models.size() == 3);
  REQUIRE(cfg->models[0].second == "/srv/models/a.pt");
  REQUIRE(cfg->models[1].second == "/abs/b.pt");
  REQUIRE(cfg->models[2] ==
          std::make_pair(std::string("c"), (std::filesystem::current_path() / "sub/c.pt").string()));
  f.Write("model = a=a.pt\n");
  auto bad = LoadConfig(*Args({"--config", f.path.c_str()}));
  REQUIRE(bad.status().message() == "model 'a': archive path 'a.pt' must be absolute (or set model_repository)");
}

TEST_CASE("a reload re-reads the file and puts the command line's overrides back on top", "[config]") {
  ConfFile f("workers = 2\nmax_queue = 100\nunload_grace_ms = 5000\nlog_level = info\nadmin_group =\n");
  auto start = LoadConfig(*Args({"--config", f.path.c_str(), "--max-queue", "2"}));
  REQUIRE(start.ok());
  REQUIRE(start->max_queue == 2);
  SupervisorConfig running = *start;
  running.worker_binary = "/opt/shoal/bin/shoal-worker";  // as Supervisor::Start works it out
  running.listen_fd = 3;

  f.Write("workers = 3\nmax_queue = 500\nunload_grace_ms = 200\nlog_level = warn\nadmin_group = ops\n"
          "interpreters = 4\nworker_address_space_mb = 256\nworker_memory_mb = 0\n");
  auto r = ReloadConfig(running);
  REQUIRE(r.ok());
  const SupervisorConfig& now = r->config;
  REQUIRE(now.max_queue == 2);  // the command line still wins
  REQUIRE(now.workers == 3);
  REQUIRE(now.unload_grace_ms == 200);
  REQUIRE(now.log_level == "warn");
  REQUIRE(now.admin_group == "ops");
  REQUIRE(now.sandbox.address_space_bytes == uint64_t{256} << 20);
  REQUIRE(now.worker_memory_mb == 0);
  // restart-only settings keep their running values and are named
  REQUIRE(now.interpreters == 1);
  REQUIRE(r->needs_restart == std::vector<std::string>{"interpreters (1 -> 4)"});
  REQUIRE(now.worker_binary == "/opt/shoal/bin/shoal-worker");
  REQUIRE(now.listen_fd == 3);
  REQUIRE(now.config_path == f.path);
  // the reloaded configuration reloads the same way
  REQUIRE(now.command_line.overrides.size() == 1);
  REQUIRE(ReloadConfig(now)->config.max_queue == 2);

  f.Write("workers = 3\nmax_queue = lots\n");
  auto bad = ReloadConfig(running);
  REQUIRE(bad.status().message() == f.path + ":2: max_queue takes an integer in [0, 16777216], not 'lots'");
}

TEST_CASE("--help is the table, and shoald.conf documents every option", "[config]") {
  std::string help = HelpText();
  std::ifstream in(SHOAL_SOURCE_DIR "/systemd/shoald.conf");
  std::string conf((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const Option& o : Options()) {
    CAPTURE(o.key);
    REQUIRE(help.find("  " + o.Flag() + " ") != std::string::npos);
    REQUIRE(conf.find(std::string(o.key) + " = ") != std::string::npos);
  }
  REQUIRE(help.find("--max-queue N") != std::string::npos);
  std::string words;  // the help as words: Boost wraps lines to fit its columns
  for (char ch : help) {
    if (!std::isspace(static_cast<unsigned char>(ch))) words += ch;
    else if (!words.empty() && words.back() != ' ') words += ' ';
  }
  REQUIRE(words.find("default 1024") != std::string::npos);
  REQUIRE(help.find("--no-zygote") != std::string::npos);
  REQUIRE(Args({"-h"})->help);
}

TEST_CASE("worker_memory_mb is auto by default, a number of MiB, or 0 for none", "[config]") {
  REQUIRE(SupervisorConfig{}.worker_memory_mb == kAutoWorkerMemory);
  REQUIRE(FindOption("worker_memory_mb")->get(SupervisorConfig{}) == "auto");
  SupervisorConfig cfg;
  REQUIRE(ParseConfig("worker_memory_mb = 2048\n", "f", &cfg).ok());
  REQUIRE(cfg.worker_memory_mb == 2048);
  REQUIRE(FindOption("worker_memory_mb")->get(cfg) == "2048");
  REQUIRE(ParseConfig("worker_memory_mb = auto\n", "f", &cfg).ok());
  REQUIRE(cfg.worker_memory_mb == kAutoWorkerMemory);
  REQUIRE(ParseConfig("worker_memory_mb = 0\n", "f", &cfg).ok());
  REQUIRE(cfg.worker_memory_mb == 0);
  // "auto" is a value of this option only
  REQUIRE(ParseConfig("workers = auto\n", "f", &cfg).message() == "f:1: workers takes an integer in [0, 1024], not 'auto'");
}

TEST_CASE("a worker's sandbox carries landlock and its temporary folder's root through its arguments",
          "[config]") {
  auto cli = Args({"--no-landlock", "--worker-network", "yes"});
  REQUIRE(cli.ok());
  auto cfg = LoadConfig(*cli);
  REQUIRE(cfg.ok());
  REQUIRE_FALSE(cfg->sandbox.landlock);
  SandboxConfig worker = WorkerSandbox(*cfg, "/tmp/shoald-x");
  REQUIRE(worker.tmp_root == "/tmp/shoald-x");
  SandboxConfig parsed;
  auto args = worker.ToArgs();
  for (size_t i = 0; i + 1 < args.size(); i += 2) REQUIRE(parsed.ParseArg(args[i], args[i + 1]));
  REQUIRE(parsed.ToArgs() == args);
  REQUIRE_FALSE(parsed.landlock);
  REQUIRE(parsed.allow_network);
}
