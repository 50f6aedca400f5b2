// The worker's sandbox: what a process running third-party model code gives up.
//
// Applied in each worker (after the zygote forked it; the zygote itself stays unconfined)
// before any model code runs: a uid of its own when shoald is root (no supplementary
// groups, no capabilities), PR_SET_NO_NEW_PRIVS, resource limits (address space, CPU
// seconds, open files), Landlock filesystem rules (worker/landlock.h; what a worker may
// reach is worked out in worker/filesystem_view.h), and a seccomp filter that denies
// (EPERM) system calls model code has no business making: ptrace, mount, kexec, module
// loading, namespaces, bpf, raw and network sockets unless allowed. docs/security.md
// lists them and why.
// Thread-safety: call once, single-threaded, before starting threads.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "shoal/status.h"
#include "worker/landlock.h"

namespace shoal {

struct SandboxConfig {
  uint64_t address_space_bytes = 0;  // RLIMIT_AS; 0 = unlimited
  uint64_t cpu_seconds = 0;          // RLIMIT_CPU; 0 = unlimited
  uint64_t open_files = 4096;        // RLIMIT_NOFILE
  bool allow_network = false;        // AF_INET/AF_INET6 sockets for model code
  bool seccomp = true;               // install the filter (when built with libseccomp)
  bool landlock = true;              // filesystem rules (where the kernel has Landlock)
  // Folders of archives workers may read, ':'-separated: sandbox_read_paths, plus (in
  // what shoald passes a worker) model_repository and the folders of configured models.
  // Only loads by path need them.
  std::string read_paths;
  // Where each worker makes its private temporary folder (ROOT/PID, its TMPDIR); set by
  // shoald (supervisor/worker_tmp.h), not an option.
  std::string tmp_root;
  // The user a root worker switches to (shoald's --run-as UID:GID, supervisor/worker_user.h);
  // -1: keep the uid. Not in ToArgs: shoald adds it to every worker's command line itself.
  int64_t run_as_uid = -1;
  int64_t run_as_gid = -1;

  // As command-line arguments for shoal-worker, and back.
  std::vector<std::string> ToArgs() const {
    return {"--rlimit-as", std::to_string(address_space_bytes), "--rlimit-cpu", std::to_string(cpu_seconds),
            "--rlimit-nofile", std::to_string(open_files), "--allow-network", allow_network ? "1" : "0",
            "--seccomp", seccomp ? "1" : "0", "--landlock", landlock ? "1" : "0", "--read-paths", read_paths,
            "--tmp-root", tmp_root};
  }
  // Takes one "--flag value" pair if it is a sandbox option; false otherwise.
  bool ParseArg(const std::string& flag, const std::string& value) {
    uint64_t v = std::strtoull(value.c_str(), nullptr, 10);
    if (flag == "--read-paths") {
      read_paths = value;
    } else if (flag == "--tmp-root") {
      tmp_root = value;
    } else if (flag == "--landlock") {
      landlock = v != 0;
    } else if (flag == "--rlimit-as") {
      address_space_bytes = v;
    } else if (flag == "--rlimit-cpu") {
      cpu_seconds = v;
    } else if (flag == "--rlimit-nofile") {
      open_files = v;
    } else if (flag == "--allow-network") {
      allow_network = v != 0;
    } else if (flag == "--seccomp") {
      seccomp = v != 0;
    } else if (flag == "--run-as") {  // UID:GID
      auto colon = value.find(':');
      if (colon == std::string::npos) return false;
      run_as_uid = static_cast<int64_t>(std::strtoull(value.c_str(), nullptr, 10));
      run_as_gid = static_cast<int64_t>(std::strtoull(value.c_str() + colon + 1, nullptr, 10));
    } else {
      return false;
    }
    return true;
  }
};

// True when this build can install seccomp filters.
bool SeccompAvailable();

// Everything above, in this order: process group, capabilities, not dumpable,
// no_new_privs, rlimits, Landlock with `files` (when cfg.landlock and the kernel has it),
// seccomp.
Status ApplySandbox(const SandboxConfig& cfg, const FilesystemView& files);

}  // namespace shoal
