// The option table, the checks of one value, and the command line through
// Boost.Program_options (supervisor/options.h). Immutable after first use; any thread.
#include "supervisor/options.h"

#include <boost/program_options.hpp>
#include <filesystem>
#include <sstream>
#include <type_traits>

#include "http/listen_address.h"
#include "protocol/spin.h"

namespace shoal {

namespace po = boost::program_options;

namespace {

// A setting as text. The types are those of SupervisorConfig's fields.
template <typename T>
std::string Show(const T& field) {
  if constexpr (std::is_same_v<T, bool>) {
    return field ? "yes" : "no";
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(field);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return field;
  } else {  // models
    std::string out;
    for (const auto& [name, path] : field) out += (out.empty() ? "" : ", ") + name + "=" + path;
    return out;
  }
}

template <typename T>
void Store(T* field, const OptionValue& v) {
  if constexpr (std::is_same_v<T, bool>) {
    *field = v.yes;
  } else if constexpr (std::is_integral_v<T>) {
    *field = static_cast<T>(v.number);  // within the option's bounds, which fit T
  } else if constexpr (std::is_same_v<T, std::string>) {
    *field = v.text;
  } else {
    field->emplace_back(v.name, v.text);
  }
}

// The field at the end of a chain of members: Get<&SupervisorConfig::sandbox, &SandboxConfig::seccomp>.
template <auto... Path>
std::string Get(const SupervisorConfig& c) {
  return Show((c .* ... .* Path));
}
template <auto... Path>
void Set(SupervisorConfig* c, const OptionValue& v) {
  Store(&(*c .* ... .* Path), v);
}
template <auto... Path>
void Keep(const SupervisorConfig& from, SupervisorConfig* to) {
  (*to .* ... .* Path) = (from .* ... .* Path);
}

template <auto... Path>
Option Make(const char* key, OptionKind kind, const char* arg, bool reloadable, const char* help, uint64_t min = 0,
            uint64_t max = 0, const char* default_text = nullptr) {
  return Option{key, kind, arg, reloadable, help, min, max, default_text, &Get<Path...>, &Set<Path...>,
                &Keep<Path...>};
}

// worker_address_space_mb is kept in bytes.
std::string GetAddressSpaceMb(const SupervisorConfig& c) {
  return std::to_string(c.sandbox.address_space_bytes >> 20);
}
void SetAddressSpaceMb(SupervisorConfig* c, const OptionValue& v) { c->sandbox.address_space_bytes = v.number << 20; }
// worker_memory_mb: a number, or "auto".
std::string GetWorkerMemory(const SupervisorConfig& c) {
  return c.worker_memory_mb == kAutoWorkerMemory ? "auto" : std::to_string(c.worker_memory_mb);
}
void SetWorkerMemory(SupervisorConfig* c, const OptionValue& v) {
  c->worker_memory_mb = v.automatic ? kAutoWorkerMemory : v.number;
}

// spin_us: a number, or "auto".
std::string GetSpin(const SupervisorConfig& c) {
  return c.spin_us == kAutoSpin ? "auto" : std::to_string(c.spin_us);
}
void SetSpin(SupervisorConfig* c, const OptionValue& v) { c->spin_us = v.automatic ? kAutoSpin : v.number; }

constexpr bool kReload = true;
constexpr bool kRestart = false;
constexpr uint64_t kMaxMs = uint64_t{1} << 40;

std::vector<Option> MakeTable() {
  using C = SupervisorConfig;
  using S = SandboxConfig;
  using K = OptionKind;
  std::vector<Option> t = {
      Make<&C::socket_path>("socket", K::kText, "PATH", kRestart,
                            "client socket (ignored under systemd socket activation)", 0, 0,
                            "$SHOAL_SOCKET, else /run/shoal/shoal.sock for root, else "
                            "$XDG_RUNTIME_DIR/shoal/shoal.sock"),
      Make<&C::workers>("workers", K::kNumber, "N", kReload, "worker processes", 1, 1024),
      Make<&C::interpreters>("interpreters", K::kNumber, "K", kRestart,
                             "Python interpreters per worker, each with its own GIL", 1, 64),
      Make<&C::gpus>("gpus", K::kText, "LIST", kRestart,
                     "GPUs workers are placed on, round-robin: all, none or indices such as 0,1 (each worker sees its own alone)", 0, 0, "all"),
      Make<&C::share_gpu_weights>("share_gpu_weights", K::kYesNo, "yes|no", kRestart,
                                  "one copy of a model's GPU weights per GPU, mapped by every worker there "
                                  "(no: each worker uploads its own, as other servers do)"),
      Make<&C::interpreter_cache>("interpreter_cache", K::kText, "DIR", kRestart,
                                  "private library copies for interpreters > 1", 0, 0, "in the runtime folder"),
      Make<&C::models>("model", K::kModel, "NAME=ARCHIVE", kRestart,
                       "load this archive at start-up (repeatable); NAME@DEVICE=ARCHIVE runs it on DEVICE (cpu, "
                       "cuda, cuda:N; default: where it was exported); a relative path is under "
                       "model_repository in the file, under the current folder on the command line"),
      Make<&C::model_repository>("model_repository", K::kText, "DIR", kReload,
                                 "serve the archives in DIR: NAME.pt as model NAME, NAME/VERSION.pt as "
                                 "NAME:VERSION; loaded at start, and on SIGHUP new ones are loaded, removed ones "
                                 "unloaded, changed ones loaded again; relative paths of the file's model lines are "
                                 "under DIR too"),
      Make<&C::metrics_address>("metrics_address", K::kAddress, "ADDRESS", kRestart,
                                "serve Prometheus metrics (GET /metrics over HTTP) on a Unix socket PATH, on "
                                "127.0.0.1:PORT or [::1]:PORT, or on every interface when written 0.0.0.0:PORT or "
                                "[::]:PORT (no other address: the page has no authentication); empty: off"),
      Make<&C::http_address>("http_address", K::kAddress, "ADDRESS", kRestart,
                             "serve the KServe v2 REST API (Open Inference Protocol: health, model metadata, "
                             "infer with JSON or binary tensors) on a Unix socket PATH, 127.0.0.1:PORT or "
                             "[::1]:PORT, or on every interface when written 0.0.0.0:PORT or [::]:PORT, through "
                             "shoal-http, a process of its own that may not load or unload models; empty: off"),
      Make<&C::http_max_body_mb>("http_max_body_mb", K::kNumber, "MB", kRestart,
                                 "the largest infer request body shoal-http takes (413 beyond)", 1, 65536),
      Make<&C::default_timeout_ms>("timeout_ms", K::kNumber, "MS", kReload,
                                   "deadline of jobs that give none (0 = none)", 0, kMaxMs),
      Make<&C::kill_grace_ms>("kill_grace_ms", K::kNumber, "MS", kReload,
                              "a worker still running a timed-out job is killed after this", 0, kMaxMs),
      Make<&C::max_queue>("max_queue", K::kNumber, "N", kReload,
                          "queued jobs per model beyond this are answered OVERLOADED", 0, uint64_t{1} << 24),
      Make<&C::max_clients>("max_clients", K::kNumber, "N", kReload,
                            "client connections beyond this are refused (OVERLOADED)", 1, uint64_t{1} << 20),
      Make<&C::frame_timeout_ms>("frame_timeout_ms", K::kNumber, "MS", kReload,
                                 "a client that sends part of a message and then nothing for this long is "
                                 "disconnected", 1, kMaxMs),
      Make<&C::drain_grace_ms>("drain_grace_ms", K::kNumber, "MS", kReload,
                               "on SIGTERM, running jobs get this long to finish", 0, kMaxMs),
      Make<&C::load_timeout_ms>("load_timeout_ms", K::kNumber, "MS", kReload,
                                "a load (or a worker's start-up load) that takes longer is answered TIMEOUT and "
                                "its worker restarted", 1, kMaxMs),
      Make<&C::unload_grace_ms>("unload_grace_ms", K::kNumber, "MS", kReload,
                                "unload waits this long for the jobs a model has accepted", 0, kMaxMs),
      Make<&C::admin_group>("admin_group", K::kText, "GROUP", kReload,
                            "members may load and unload models (besides root and shoald's user)"),
      Make<&C::worker_user>("worker_user", K::kText, "USER", kRestart,
                            "who workers run as when shoald runs as root: auto (user shoal-worker if it "
                            "exists, else nobody), a user name, or shoald (shoald's uid, no capabilities)"),
      Make<&C::send_ahead_ms>("send_ahead_ms", K::kNumber, "MS", kReload,
                              "when every interpreter is busy, send a job to one of them ahead of its turn, so "
                              "it starts the moment the job before it ends; only behind a job that has run less "
                              "than MS so far and whose model's jobs take less on average; never a batch (0 = never)",
                              0, kMaxMs),
      Make<&C::max_jobs_per_worker>("max_jobs_per_worker", K::kNumber, "N", kReload,
                                    "recycle a worker after this many jobs (0 = never)", 0, kMaxMs),
      Make<&C::crash_loop_limit>("crash_loop_limit", K::kNumber, "N", kReload,
                                 "crashes within crash_window_s that refuse a client the model (its own "
                                 "jobs), or mark the model failed (while loading, or from two clients)", 1, 1000),
      Make<&C::crash_window_s>("crash_window_s", K::kNumber, "S", kReload, "see crash_loop_limit", 0,
                               uint64_t{1} << 30),
      Option{"worker_memory_mb", K::kNumber, "MB|auto", kReload,
             "memory limit of each worker and what model code starts in it, in MiB (0 = none; auto = 3/4 "
             "of the memory shoald may use, divided by workers, at least 512); enforced by a memory cgroup "
             "per worker where shoald can make one, else by shoald's sampler; applies to workers started "
             "from then on",
             0, uint64_t{1} << 30, nullptr, &GetWorkerMemory, &SetWorkerMemory, &Keep<&C::worker_memory_mb>,
             true},
      Make<&C::worker_memory_cgroup>("worker_memory_cgroup", K::kYesNo, "yes|no", kRestart,
                                     "put each worker in a memory cgroup of its own where shoald can make one "
                                     "(no: only shoald's sampler enforces worker_memory_mb)"),
      Option{"worker_address_space_mb", K::kNumber, "MB", kReload,
             "address-space limit (RLIMIT_AS) of each worker (0 = none); not for CUDA workers, which map far "
             "more address space than they use",
             0, uint64_t{1} << 30, nullptr, &GetAddressSpaceMb, &SetAddressSpaceMb,
             &Keep<&C::sandbox, &S::address_space_bytes>},
      Make<&C::sandbox, &S::cpu_seconds>("worker_cpu_seconds", K::kNumber, "S", kReload,
                                         "CPU-time limit of each worker (0 = none)", 0, uint64_t{1} << 30),
      Make<&C::sandbox, &S::open_files>("worker_open_files", K::kNumber, "N", kReload, "open files per worker", 0,
                                        uint64_t{1} << 20),
      Make<&C::sandbox, &S::allow_network>("worker_network", K::kYesNo, "yes|no", kReload,
                                           "may model code open IPv4/IPv6 sockets"),
      Make<&C::sandbox, &S::seccomp>("seccomp", K::kYesNo, "yes|no", kReload,
                                     "deny system calls model code has no business making"),
      Make<&C::sandbox, &S::landlock>("landlock", K::kYesNo, "yes|no", kReload,
                                      "let model code read only the Python installation, system libraries and "
                                      "archives, and write only a private temporary folder (Linux Landlock, where "
                                      "the kernel has it)"),
      Make<&C::worker_arenas>("worker_arenas", K::kNumber, "N", kReload,
                              "client arenas whose descriptors a worker holds at most; the least recently used "
                              "one no running job reads is dropped first", 1, 1 << 16),
      Make<&C::worker_arena_mb>("worker_arena_mb", K::kNumber, "MB", kReload,
                                "bytes of client arenas a worker holds at most (as worker_arenas); host "
                                "arenas and GPU arenas each", 1,
                                uint64_t{1} << 30),
      Make<&C::output_arena_mb>("output_arena_mb", K::kNumber, "MB", kReload,
                                "size of the output arena a worker makes for a client (larger when one output "
                                "needs it)", 1, uint64_t{1} << 20),
      Make<&C::output_arenas>("output_arenas", K::kNumber, "N", kReload,
                                         "output arenas a worker interpreter makes for one client connection; "
                                         "beyond them outputs are ARENA_FULL until results are dropped", 1, 8),
      Make<&C::zygote>("zygote", K::kYesNo, "yes|no", kRestart,
                       "fork workers from a zygote that imported torch once (no: exec every one)"),
      Make<&C::log_level>("log_level", K::kLogLevel, "LEVEL", kReload,
                          "trace|debug|info|warn|error|critical|off"),
      Option{"spin_us", K::kNumber, "US|auto", kRestart,
             "shoald and its workers poll for the next message this long before they sleep (clients: "
             "SHOAL_SPIN_US in their environment): fewer wake-ups a job, a core kept busy that long after "
             "each message; 0: never; auto: SHOAL_SPIN_US if set, else 50 where shoald may use at least "
             "2 CPUs per worker interpreter and 4 more, else never",
             0, kMaxSpinUs, nullptr, &GetSpin, &SetSpin, &Keep<&C::spin_us>, true},
      Make<&C::worker_binary>("worker_binary", K::kText, "PATH", kRestart, "the worker executable", 0, 0,
                              "shoal-worker-py next to shoald for one interpreter, else shoal-worker"),
  };
  return t;
}

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

const char* const kLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};

// Checks a value against its option; `name` is how the setting was written.
Result<OptionValue> Check(const Option& o, const std::string& value, const std::string& name) {
  auto bad = [&](const std::string& why) { return Status::BadRequest(name + " " + why); };
  OptionValue v;
  switch (o.kind) {
    case OptionKind::kNumber:
      if (o.takes_auto && value == "auto") {
        v.automatic = true;
        break;
      }
      if (!ParseUint(value, &v.number) || v.number > o.max) {
        return bad("takes an integer in [0, " + std::to_string(o.max) + "]" + (o.takes_auto ? " or auto" : "") +
                   ", not '" + value + "'");
      }
      if (v.number < o.min) return bad("must be at least " + std::to_string(o.min));
      break;
    case OptionKind::kYesNo:
      if (value != "yes" && value != "no") return bad("takes yes or no, not '" + value + "'");
      v.yes = value == "yes";
      break;
    case OptionKind::kLogLevel: {
      bool known = false;
      for (const char* l : kLevels) known = known || value == l;
      if (!known) return bad("must be trace|debug|info|warn|error|critical|off, not '" + value + "'");
      v.text = value;
      break;
    }
    case OptionKind::kModel: {
      auto eq = value.find('=');
      v.name = Trim(value.substr(0, eq));
      v.text = eq == std::string::npos ? "" : Trim(value.substr(eq + 1));
      if (v.name.empty() || v.text.empty()) return bad("takes NAME=ARCHIVE, not '" + value + "'");
      break;
    }
    case OptionKind::kText:
      v.text = value;
      break;
    case OptionKind::kAddress:
      if (!value.empty()) {
        auto a = ParseListenAddress(value, name);
        if (!a.ok()) return a.status();
      }
      v.text = value;
      break;
  }
  return v;
}

po::options_description Describe() {
  po::options_description d("Options", 100, 48);
  d.add_options()("config", po::value<std::string>()->value_name("FILE"),
                  "read this configuration file (shoald.conf(5) describes it); the options after "
                  "--config override it, at start and on every SIGHUP")("help,h", "print this help and exit");
  for (const Option& o : Options()) {
    std::string help = o.help;
    std::string def = o.default_text ? o.default_text : o.get(SupervisorConfig{});
    if (!def.empty()) help += "; default " + def;
    if (!o.reloadable) help += "; changes need a restart";
    std::string flag = o.Flag().substr(2);
    d.add_options()(flag.c_str(), po::value<std::string>()->value_name(o.arg), help.c_str());
    if (o.kind == OptionKind::kYesNo) {
      d.add_options()(("no-" + flag).c_str(), ("same as --" + flag + " no").c_str());
    }
  }
  return d;
}

}  // namespace

std::string Option::Flag() const {
  std::string f = std::string("--") + key;
  for (char& ch : f) ch = ch == '_' ? '-' : ch;
  return f;
}

const std::vector<Option>& Options() {
  static const std::vector<Option> table = MakeTable();
  return table;
}

const Option* FindOption(const std::string& key) {
  for (const Option& o : Options()) {
    if (key == o.key) return &o;
  }
  return nullptr;
}

Status ApplySetting(const Setting& s, SupervisorConfig* cfg) {
  std::string where = s.file.empty() ? "" : s.file + ":" + std::to_string(s.line) + ": ";
  const Option* o = FindOption(s.key);
  if (o == nullptr) {
    return Status::BadRequest(where + "unknown key '" + s.key +
                              "' (shoald --help lists the options; man shoald.conf describes them)");
  }
  auto v = Check(*o, s.value, s.file.empty() ? o->Flag() : where + s.key);
  if (!v.ok()) return v.status();
  o->set(cfg, *v);
  return Status::Ok();
}

Result<CommandLine> ParseCommandLine(int argc, const char* const* argv) {
  const po::options_description desc = Describe();
  std::vector<po::option> parsed;
  try {
    parsed = po::command_line_parser(argc, argv)
                 .options(desc)
                 .style(po::command_line_style::unix_style ^ po::command_line_style::allow_guessing)
                 .run()
                 .options;
  } catch (const po::error& e) {
    return Status::BadRequest(std::string(e.what()) + " (shoald --help lists the options)");
  }
  CommandLine cli;
  bool seen_config = false;
  for (const po::option& opt : parsed) {
    const std::string& flag = opt.string_key;
    std::string value = opt.value.empty() ? "" : opt.value.front();
    if (flag.empty()) return Status::BadRequest("unexpected argument '" + value + "' (options start with --)");
    // Boost takes "--workers --max-queue 3" as workers = "--max-queue".
    if (value.rfind("--", 0) == 0 && desc.find_nothrow(value.substr(2), false) != nullptr) {
      return Status::BadRequest("the required argument for option '--" + flag + "' is missing");
    }
    if (flag == "help") {
      cli.help = true;
      continue;
    }
    if (flag == "config") {
      if (seen_config) return Status::BadRequest("--config given twice ('" + cli.config_path + "', '" + value + "')");
      if (value.empty()) return Status::BadRequest("--config needs a file name");
      seen_config = true;
      cli.config_path = std::filesystem::absolute(value).lexically_normal().string();
      continue;
    }
    Setting s;
    std::string key = flag;
    for (char& ch : key) ch = ch == '-' ? '_' : ch;
    s.key = key;
    s.value = value;
    if (key.rfind("no_", 0) == 0 && FindOption(key) == nullptr) {  // --no-zygote
      s.key = key.substr(3);
      s.value = "no";
    }
    SupervisorConfig checked;
    if (auto st = ApplySetting(s, &checked); !st.ok()) return st;
    if (s.key == "model" && checked.models[0].second[0] != '/') {
      // Under the current folder, as any path on a command line (the file's are under
      // model_repository).
      const auto& [name, path] = checked.models[0];
      s.value = name + "=" + std::filesystem::absolute(path).lexically_normal().string();
    }
    (seen_config ? cli.overrides : cli.defaults).push_back(std::move(s));
  }
  if (!seen_config) std::swap(cli.defaults, cli.overrides);  // no file between them: all override
  return cli;
}

std::string HelpText() {
  std::ostringstream out;
  out << "usage: shoald [--config FILE] [--OPTION VALUE]...\n"
         "\n"
         "The shoal supervisor: serves models to clients on a Unix socket from sandboxed worker\n"
         "processes. Every option is also a key of the configuration file, with '_' for '-'\n"
         "(--max-queue 8 is \"max_queue = 8\"), and both take the same values. Options given\n"
         "after --config override the file, at start and on every SIGHUP; options given before\n"
         "it are defaults that the file may change.\n"
         "\n"
      << Describe()
      << "\n"
         "SIGTERM drains and exits. SIGHUP re-reads --config, puts the command line's options\n"
         "back on top and applies every setting but those that need a restart; then it reads\n"
         "model_repository again (new archives load, removed ones unload, changed ones reload).\n"
         "\n"
         "man shoald and man shoald.conf describe every option.\n"
         "\n"
         "Under systemd, shoald takes its listening socket from socket activation (LISTEN_FDS) and\n"
         "reports READY=1 once the configured models serve (NOTIFY_SOCKET, WATCHDOG_USEC).\n";
  return out.str();
}

}  // namespace shoal
