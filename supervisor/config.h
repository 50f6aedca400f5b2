// shoald's configuration: SupervisorConfig, and how it is put together from the defaults,
// the configuration file (/etc/shoal/shoald.conf: "key = value" lines, '#' comments) and
// the command line, at start and again on SIGHUP. Every setting is an entry of one table
// (supervisor/options.h) that both the file and the command line go through.
//
// Layers, each overriding the one before: the defaults; options given before --config;
// the file; options given after --config (all of them when there is no --config). The
// command line is kept in SupervisorConfig::command_line so that a reload re-reads the
// file and puts the same overrides back on top.
// The command line itself is parsed in supervisor/options.h (ParseCommandLine).
// Thread-safety: plain values and pure functions (they read files, nothing else); call
// them from any thread.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "shoal/status.h"
#include "worker/sandbox.h"

namespace shoal {

// One "key = value" as written in the file or as a command-line option.
struct Setting {
  std::string key;    // the file's key ("max_queue"), also for a flag ("--max-queue")
  std::string value;
  std::string file;   // where it was written; empty: on the command line
  int line = 0;
};

// What shoald's command line said, kept for every reload.
struct CommandLine {
  std::string config_path;         // --config, made absolute; empty: no file
  std::vector<Setting> defaults;   // given before --config: the file may override them
  std::vector<Setting> overrides;  // given after --config: they override the file
  bool help = false;               // --help: print HelpText() and exit
};

// worker_memory_mb = auto: a share of the machine, worked out as each worker starts
// (supervisor/worker_memory.h).
constexpr uint64_t kAutoWorkerMemory = ~uint64_t{0};
// spin_us = auto: polling where the machine has CPUs to spare, worked out at start-up
// (supervisor/event_loop.h, StartupSpinBudget).
constexpr uint64_t kAutoSpin = ~uint64_t{0};

struct SupervisorConfig {
  std::string socket_path;
  int listen_fd = -1;             // an already-listening socket (systemd socket activation)
  int workers = 2;
  int interpreters = 1;           // per worker (K > 1: private library copies, worker/private_copy.h)
  std::string interpreter_cache;  // where the copies live; default: the runtime folder
  std::string worker_binary;                                   // default: next to shoald
  uint64_t spin_us = kAutoSpin;  // receivers poll this long before blocking (protocol/spin.h)
  std::vector<std::pair<std::string, std::string>> models;     // loaded at start-up
  uint64_t default_timeout_ms = 60000;                         // a job's deadline if it gives none
  uint64_t kill_grace_ms = 2000;  // a worker whose job timed out gets this long before SIGKILL
  size_t max_queue = 1024;        // per model: queued jobs beyond this are answered OVERLOADED
  size_t max_clients = 256;       // connections beyond this are refused (OVERLOADED)
  uint64_t frame_timeout_ms = 10000;  // a client that sends part of a frame, then nothing, is cut off
  int crash_loop_limit = 3;       // this many crashes within crash_window_s mark a model failed
  uint64_t crash_window_s = 60;
  uint64_t max_jobs_per_worker = 0;  // recycle a worker after this many jobs (0 = never)
  // A job may wait in a busy interpreter's queue behind a job shorter than this (0 = never).
  uint64_t send_ahead_ms = 10;
  uint64_t load_timeout_ms = 300000;  // a worker still loading a model after this is restarted
  uint64_t unload_grace_ms = 5000;   // unload waits this long for the jobs a model has
  std::string config_path;         // re-read on SIGHUP
  uint64_t drain_grace_ms = 10000;  // SIGTERM: running jobs get this long to finish
  std::string admin_group;          // members may load/unload (besides root and shoald's user)
  std::string worker_user = "auto";  // who workers run as when shoald is root (supervisor/worker_user.h)
  std::string model_repository;     // served (supervisor/model_repository.h); relative model lines are under it
  std::string metrics_address;      // /metrics over HTTP (supervisor/metrics_server.h); empty: off
  std::string http_address;         // the KServe v2 front, shoal-http (supervisor/http_front.h); empty: off
  uint64_t http_max_body_mb = 64;   // the largest infer request shoal-http takes
  std::string log_level = "info";
  bool zygote = true;               // fork workers from a zygote (else exec each one)
  std::string gpus = "all";         // GPUs workers are placed on: all, none, or indices "0,1"
  bool share_gpu_weights = true;    // one copy of a model's GPU weights per GPU (supervisor/gpu_weights.h)
  // Memory ownership (docs/architecture.md): what one worker holds for its clients.
  uint64_t worker_arenas = 256;             // client arenas whose fds a worker holds at most
  uint64_t worker_arena_mb = 8192;          // ... and their bytes (idle ones are dropped first)
  uint64_t output_arena_mb = 64;            // a worker's output arena for a client (more if needed)
  uint64_t output_arenas = 8;    // output arenas per worker interpreter and client
  uint64_t worker_memory_mb = kAutoWorkerMemory;  // per worker, MiB; 0 = no limit
  bool worker_memory_cgroup = true;  // enforce it with a memory cgroup per worker where possible
  SandboxConfig sandbox;            // applied in every worker
  CommandLine command_line;         // what LoadConfig was given; ReloadConfig applies it again
};

// Applies the text of a configuration file to *cfg, line by line; `origin` names it in
// errors ("origin:LINE: ..."). Archive paths of `model` lines are left as written.
Status ParseConfig(const std::string& text, const std::string& origin, SupervisorConfig* cfg);
Status LoadConfigFile(const std::string& path, SupervisorConfig* cfg);

// The configuration shoald runs with: the layers above, then relative archive paths of
// `model` lines resolved against model_repository (an error when none is set). Does not
// open the archives.
Result<SupervisorConfig> LoadConfig(const CommandLine& cli);

// The sandbox of a worker (its command-line arguments): config.sandbox, with its private
// temporary folder under `tmp_root` (supervisor/worker_tmp.h).
SandboxConfig WorkerSandbox(const SupervisorConfig& config, const std::string& tmp_root);

// SIGHUP. Reads running.command_line's file again with the same command-line layers on
// top, and returns the configuration to run with from now on: every reloadable setting
// (workers, timeouts and grace periods, max_queue, crash limits, admin_group, sandbox,
// log_level, model_repository) as the layers say; every setting that needs a restart
// (socket, interpreters, interpreter_cache, zygote, worker_binary, model) kept as it runs,
// a different new value named in needs_restart. listen_fd is kept too.
// An error (unreadable file, bad value) means: keep running as before.
struct Reloaded {
  SupervisorConfig config;
  std::vector<std::string> needs_restart;  // "interpreters (1 -> 4)", one a setting
};
Result<Reloaded> ReloadConfig(const SupervisorConfig& running);

}  // namespace shoal
