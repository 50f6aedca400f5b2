#include "worker/landlock.h"

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

// The kernel's user API (include/uapi/linux/landlock.h). Defined here rather than taken
// from <linux/landlock.h>: build hosts carry headers older than the kernels the workers
// run on (Debian 12's know ABI 2), and the values never change.
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif

namespace shoal {

namespace {

constexpr uint32_t kCreateRulesetVersion = 1u << 0;
constexpr int kRulePathBeneath = 1;

// Filesystem rights, by the ABI that introduced them.
constexpr uint64_t kExecute = 1ull << 0;
constexpr uint64_t kWriteFile = 1ull << 1;
constexpr uint64_t kReadFile = 1ull << 2;
constexpr uint64_t kReadDir = 1ull << 3;
// 1 << 4 .. 1 << 12: remove_dir, remove_file, make_char, make_dir, make_reg, make_sock,
// make_fifo, make_block, make_sym.
constexpr uint64_t kMakeChar = 1ull << 6;
constexpr uint64_t kMakeBlock = 1ull << 11;
constexpr uint64_t kAbi1 = (1ull << 13) - 1;
constexpr uint64_t kRefer = 1ull << 13;        // ABI 2
constexpr uint64_t kTruncate = 1ull << 14;     // ABI 3
constexpr uint64_t kIoctlDev = 1ull << 15;     // ABI 5
// Network (ABI 4) and scopes (ABI 6).
constexpr uint64_t kNetBindTcp = 1ull << 0;
constexpr uint64_t kNetConnectTcp = 1ull << 1;
constexpr uint64_t kScopeAbstractUnixSocket = 1ull << 0;
constexpr uint64_t kScopeSignal = 1ull << 1;

// The only rights a rule on a file (not a folder) may carry.
constexpr uint64_t kFileRights = kExecute | kWriteFile | kReadFile | kTruncate | kIoctlDev;

// struct landlock_ruleset_attr as of ABI 6; older kernels are given the prefix they know.
struct RulesetAttr {
  uint64_t handled_access_fs;
  uint64_t handled_access_net;
  uint64_t scoped;
};

struct PathBeneathAttr {
  uint64_t allowed_access;
  int32_t parent_fd;
} __attribute__((packed));

uint64_t HandledFs(int abi) {
  uint64_t fs = kAbi1;
  if (abi >= 2) fs |= kRefer;
  if (abi >= 3) fs |= kTruncate;
  if (abi >= 5) fs |= kIoctlDev;
  return fs;
}

int CountThreads() {
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return -1;
  int n = 0;
  while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

// One rule. A path that exists but cannot be added stays denied, and the log says so.
// `pin`: the path's descriptor stays open for the process's life. A rule names an inode,
// and procfs makes a new inode for /proc/PID/task when its dentry was reclaimed and is
// looked up again; an open descriptor keeps the dentry, so the rule keeps matching.
void AddRule(int ruleset, const std::string& path, uint64_t rights, bool pin = false) {
  int fd = open(path.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      spdlog::warn("Landlock: {} stays denied to model code: {}", path, std::strerror(errno));
    }
    return;
  }
  struct stat st;
  if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) rights &= kFileRights;
  PathBeneathAttr attr{rights, fd};
  if (rights != 0 && syscall(SYS_landlock_add_rule, ruleset, kRulePathBeneath, &attr, 0) != 0) {
    spdlog::warn("Landlock: {} stays denied to model code: {}", path, std::strerror(errno));
  }
  if (!pin) close(fd);  // pinned: O_PATH and close-on-exec, it grants nothing by itself
}

}  // namespace

int LandlockAbi() {
  long abi = syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  return abi > 0 ? static_cast<int>(abi) : 0;
}

std::string DescribeLandlock(int abi, bool allow_network) {
  if (abi <= 0) {
    return "this kernel has no Landlock (Linux 5.13+ with lsm=...,landlock): model code may read and write "
           "whatever the worker's user may";
  }
  std::string what = "Landlock ABI " + std::to_string(abi) + ": filesystem";
  if (abi < 2) what += " (no rename or link across folders)";
  if (abi >= 4 && !allow_network) what += ", TCP";
  if (abi >= 6) what += ", abstract Unix sockets and signals scoped to the worker";
  return what;
}

Status RestrictFilesystem(const FilesystemView& view, bool allow_network) {
  const int abi = LandlockAbi();
  if (abi == 0) return Status::Ok();
  if (int threads = CountThreads(); threads > 1) {
    // Only where a library started a pool while the interpreters were imported (a worker
    // exec'd rather than forked: fork copies one thread). Model code runs on this thread
    // and on threads started from it, which are confined; seccomp holds the same way.
    spdlog::warn("Landlock binds the thread that applies it: {} threads a library started earlier stay "
                 "outside it (model code does not run on them); zygote = yes forks workers with one thread",
                 threads - 1);
  }
  const uint64_t fs = HandledFs(abi);
  RulesetAttr attr{fs, 0, 0};
  size_t size = sizeof(uint64_t);
  if (abi >= 4) {
    // No TCP unless model code may use the network (seccomp refuses the sockets already).
    attr.handled_access_net = allow_network ? 0 : kNetBindTcp | kNetConnectTcp;
    size = 2 * sizeof(uint64_t);
  }
  if (abi >= 6) {
    // Model code cannot connect to abstract Unix sockets, nor signal processes, outside
    // the worker and what it started.
    attr.scoped = kScopeAbstractUnixSocket | kScopeSignal;
    size = sizeof(RulesetAttr);
  }
  int ruleset = static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, size, 0));
  if (ruleset < 0) return Status::FromErrno("landlock_create_ruleset", errno);

  const uint64_t read = kReadFile | kReadDir;
  const uint64_t device = kReadFile | kWriteFile | kTruncate | kIoctlDev;
  // Everything in its own folder but making device nodes (which needs CAP_MKNOD anyway).
  const uint64_t read_write = fs & ~(kMakeChar | kMakeBlock | kIoctlDev);
  for (const auto& p : view.read_exec) AddRule(ruleset, p, (read | kExecute) & fs);
  for (const auto& p : view.read_only) AddRule(ruleset, p, read & fs);
  for (const auto& p : view.devices) AddRule(ruleset, p, device & fs);
  for (const auto& p : view.read_write) AddRule(ruleset, p, read_write);
  for (const auto& p : view.rewrite) AddRule(ruleset, p, (read | kWriteFile | kTruncate) & fs, /*pin=*/true);

  Status st = Status::Ok();
  if (syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) st = Status::FromErrno("landlock_restrict_self", errno);
  close(ruleset);
  return st;
}

}  // namespace shoal
