// shoald's configuration file (/etc/shoal/shoald.conf): "key = value" lines, '#' comments.
// systemd/shoald.conf documents every key with its default. Command-line options given
// after --config override the file. Pure parsing, no I/O besides reading the file.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "shoal/status.h"
#include "worker/sandbox.h"

namespace shoal {

// Everything shoald can be told, with its defaults; every role reads the settings it needs.
struct SupervisorConfig {
  std::string socket_path;
  int listen_fd = -1;             // an already-listening socket (systemd socket activation)
  int workers = 2;
  int interpreters = 1;           // per worker (K > 1: private library copies, worker/private_copy.h)
  std::string interpreter_cache;  // where the copies live; default: the runtime folder
  std::string worker_binary;                                   // default: next to shoald
  std::vector<std::pair<std::string, std::string>> models;     // loaded at start-up
  uint64_t default_timeout_ms = 60000;                         // a job's deadline if it gives none
  uint64_t kill_grace_ms = 2000;  // a worker whose job timed out gets this long before SIGKILL
  size_t max_queue = 1024;        // per model: queued jobs beyond this are answered OVERLOADED
  int crash_loop_limit = 3;       // this many crashes within crash_window_s mark a model failed
  uint64_t crash_window_s = 60;
  uint64_t max_jobs_per_worker = 0;  // recycle a worker after this many jobs (0 = never)
  uint64_t unload_grace_ms = 5000;   // unload waits this long for the jobs a model has
  std::string config_path;         // re-read on SIGHUP
  uint64_t drain_grace_ms = 10000;  // SIGTERM: running jobs get this long to finish
  std::string admin_group;          // members may load/unload (besides root and shoald's user)
  std::string model_repository;     // relative archive paths resolve against it
  std::string log_level = "info";
  bool zygote = true;               // fork workers from a zygote (else exec each one)
  SandboxConfig sandbox;            // applied in every worker
};

// Applies the text of a configuration file to *cfg; `origin` names it in errors.
Status ParseConfig(const std::string& text, const std::string& origin, SupervisorConfig* cfg);
Status LoadConfigFile(const std::string& path, SupervisorConfig* cfg);

}  // namespace shoal
