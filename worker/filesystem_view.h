// What a worker's model code may reach on the filesystem: worked out once in the zygote
// before it forks (or in an exec'd worker before its sandbox closes; worker/main.cc), the
// worker's private temporary folder added after the fork, and enforced with Landlock
// (worker/landlock.h). docs/security.md, "Landlock", lists the rules.
//
// - read and execute: the Python installation as the interpreters see it (their
//   sys.prefix, sys.path, the folders of modules already imported: shoal._sandbox), the
//   folders of every library mapped now and of LD_LIBRARY_PATH, shoal's own prefix, and
//   the system's /usr, /lib*, /bin, /sbin;
// - read only: the archives' folders (SandboxConfig::read_paths), /proc, the hardware
//   parts of /sys, and the few /etc files that libc, Python and CUDA read;
// - read, write and ioctl: /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom and
//   GPU device files where present (/dev/nvidia*, /dev/kfd, /dev/dri);
// - read and write: the worker's private temporary folder, and with K > 1 interpreters
//   the private library copies (worker/private_copy.h) that imports add to.
// Thread-safety: plain functions; call them from the worker's only thread.
#pragma once

#include <string>
#include <vector>

#include "shoal/status.h"
#include "worker/landlock.h"
#include "worker/sandbox.h"

namespace shoal {

// Makes the worker's private temporary folder, ROOT/PID (0700), and returns it. ROOT is
// shoald's (supervisor/worker_tmp.h), which removes ROOT/PID when the worker is gone.
Result<std::string> MakePrivateTmp(const std::string& root);

// The view of every worker of this process, whose interpreters import from
// `python_paths` (Interpreter::ImportFolders), with interpreter copies in
// `interpreter_cache` (empty: one interpreter); without the private temporary folder,
// which each worker adds to read_write.
FilesystemView WorkerFilesystem(const SandboxConfig& cfg, const std::vector<std::string>& python_paths,
                                const std::string& interpreter_cache);

}  // namespace shoal
