// Worker memory limits and their cgroups (supervisor/worker_memory.h).
#include "supervisor/worker_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "supervisor/own_cgroup.h"

namespace shoal {

namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kMinAutoLimit = 512 * kMiB;


Status WriteSmall(const std::string& path, const std::string& text) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno("cannot open " + path, errno);
  ssize_t n = write(fd, text.data(), text.size());
  int err = errno;
  close(fd);
  if (n != static_cast<ssize_t>(text.size())) return Status::FromErrno("cannot write '" + text + "' to " + path, err);
  return Status::Ok();
}

// The number after `key` on its line of a "key value" file (memory.events, oom_control).
uint64_t Field(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + " ", 0) == 0) return std::strtoull(line.c_str() + key.size() + 1, nullptr, 10);
  }
  return 0;
}

// What shoald may use: MemTotal, or its cgroup's limit when that is lower.
uint64_t UsableBytes() {
  uint64_t total = Field(ReadSmall("/proc/meminfo"), "MemTotal:") * 1024;
  std::string folder, mount;
  if (FindOwnCgroup("", &folder, &mount)) total = std::min(total, CgroupLimit(folder, mount, "memory.max"));
  if (FindOwnCgroup("memory", &folder, &mount)) {
    total = std::min(total, CgroupLimit(folder, mount, "memory.limit_in_bytes"));
  }
  return total;
}

bool HasWord(const std::string& text, const std::string& word) {
  std::istringstream in(text);
  for (std::string w; in >> w;) {
    if (w == word) return true;
  }
  return false;
}

// v1: groups `shoald-PID` of shoald processes that are gone (a crash or SIGKILL left them).
void RemoveStaleParents(const std::string& folder) {
  DIR* d = opendir(folder.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (dirent* e = readdir(d)) {
    std::string n = e->d_name;
    if (n.rfind("shoald-", 0) != 0) continue;
    pid_t pid = static_cast<pid_t>(std::atoi(n.c_str() + 7));
    if (pid > 0 && kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(folder + "/" + n);
  }
  closedir(d);
  for (const auto& parent : stale) {
    if (DIR* p = opendir(parent.c_str())) {
      std::vector<std::string> children;
      while (dirent* e = readdir(p)) {
        std::string n = e->d_name;
        if (n.rfind("worker-", 0) == 0) children.push_back(parent + "/" + n);
      }
      closedir(p);
      for (const auto& c : children) rmdir(c.c_str());
    }
    rmdir(parent.c_str());
  }
}

}  // namespace

WorkerMemory::WorkerMemory(bool use_cgroups) : usable_bytes_(UsableBytes()) {
  if (!use_cgroups) {
    spdlog::info("worker memory limits: enforced by shoald's sampler (worker_memory_cgroup = no)");
    return;
  }
  std::string why_v2, why_v1;
  if (OpenV2(&why_v2) || OpenV1(&why_v1)) {
    spdlog::info("worker memory limits: a {} group per worker, in {}", kind_, parent_);
    return;
  }
  spdlog::info("worker memory limits: enforced by shoald's sampler; no memory cgroup can be made here ({}{}{})",
               why_v2, why_v2.empty() || why_v1.empty() ? "" : "; ", why_v1);
}

bool WorkerMemory::OpenV2(std::string* why) {
  std::string folder, mount;
  if (!FindOwnCgroup("", &folder, &mount)) return false;  // no v2 hierarchy: not worth a word
  if (!HasWord(ReadSmall(folder + "/cgroup.controllers"), "memory")) {
    *why = "cgroup v2: the memory controller is not available in " + folder;
    return false;
  }
  if (access(folder.c_str(), W_OK) != 0) {
    *why = "cgroup v2: " + folder + " is not writable (under systemd, set Delegate=yes)";
    return false;
  }
  std::string self = std::to_string(getpid());
  bool at_root = folder == mount;
  std::string leaf = folder + "/shoald";
  if (!at_root) {
    // A cgroup with children cannot hold processes: shoald moves into a leaf of its own,
    // which it can only do when nothing else lives in its cgroup.
    std::istringstream procs(ReadSmall(folder + "/cgroup.procs"));
    std::vector<std::string> others;
    for (std::string p; procs >> p;) {
      if (p != self) others.push_back(p);
    }
    if (!others.empty()) {
      *why = "cgroup v2: " + folder + " holds other processes than shoald (" + std::to_string(others.size()) +
             "); run shoald in a cgroup of its own, e.g. a systemd unit with Delegate=yes";
      return false;
    }
    if (mkdir(leaf.c_str(), 0755) != 0 && errno != EEXIST) {
      *why = "cgroup v2: cannot make " + leaf + ": " + std::strerror(errno);
      return false;
    }
    if (auto st = WriteSmall(leaf + "/cgroup.procs", self); !st.ok()) {
      rmdir(leaf.c_str());
      *why = "cgroup v2: " + st.message();
      return false;
    }
  }
  if (!HasWord(ReadSmall(folder + "/cgroup.subtree_control"), "memory")) {
    if (auto st = WriteSmall(folder + "/cgroup.subtree_control", "+memory"); !st.ok()) {
      if (!at_root) {
        (void)WriteSmall(folder + "/cgroup.procs", self);  // back where it was
        rmdir(leaf.c_str());
      }
      *why = "cgroup v2: " + st.message();
      return false;
    }
  }
  kind_ = "cgroup v2";
  parent_ = folder;
  limit_file_ = "memory.max";
  events_file_ = "memory.events";
  return true;
}

bool WorkerMemory::OpenV1(std::string* why) {
  std::string folder, mount;
  if (!FindOwnCgroup("memory", &folder, &mount)) return false;
  if (access(folder.c_str(), W_OK) != 0) {
    *why = "cgroup v1: " + folder + " is not writable";
    return false;
  }
  RemoveStaleParents(folder);
  std::string parent = folder + "/shoald-" + std::to_string(getpid());
  if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
    *why = "cgroup v1: cannot make " + parent + ": " + std::strerror(errno);
    return false;
  }
  kind_ = "cgroup v1";
  parent_ = parent;
  own_parent_ = true;
  limit_file_ = "memory.limit_in_bytes";
  events_file_ = "memory.oom_control";
  return true;
}

WorkerMemory::~WorkerMemory() {
  for (const auto& name : std::set<std::string>(groups_)) Remove(name);
  RemoveLeftovers();
  if (own_parent_) rmdir(parent_.c_str());
}

uint64_t WorkerMemory::LimitFor(const SupervisorConfig& config) const {
  if (config.worker_memory_mb != kAutoWorkerMemory) return config.worker_memory_mb * kMiB;
  if (usable_bytes_ == 0) return 0;  // /proc/meminfo unreadable: nothing to take a share of
  uint64_t share = usable_bytes_ / 4 * 3 / static_cast<uint64_t>(std::max(1, config.workers));
  return std::max(share, kMinAutoLimit);
}

Result<WorkerCgroup> WorkerMemory::Create(const std::string& name, uint64_t limit) {
  if (kind_.empty()) return Status(Code::kUnavailable, "no memory cgroups here");
  std::string path = PathOf(name);
  if (mkdir(path.c_str(), 0755) != 0 && !(errno == EEXIST && rmdir(path.c_str()) == 0 && mkdir(path.c_str(), 0755) == 0)) {
    return Status::FromErrno("cannot make memory cgroup " + path, errno);
  }
  auto fail = [&](const Status& st) {
    rmdir(path.c_str());
    return st;
  };
  if (auto st = WriteSmall(path + "/" + limit_file_, std::to_string(limit)); !st.ok()) return fail(st);
  if (kind_ == "cgroup v1") {
    (void)WriteSmall(path + "/memory.memsw.limit_in_bytes", std::to_string(limit));  // where swap is accounted
  } else {
    (void)WriteSmall(path + "/memory.swap.max", "0");   // no swapping past the limit
    (void)WriteSmall(path + "/memory.oom.group", "1");  // the kernel kills the whole worker, not one thread's victim
  }
  int fd = open((path + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail(Status::FromErrno("cannot open " + path + "/cgroup.procs", errno));
  WorkerCgroup g;
  g.name = name;
  g.procs = std::make_shared<OwnedFd>(fd);
  g.limit_file = path + "/" + limit_file_;
  g.limit_text = ReadValue(g.limit_file);  // as the kernel keeps it (v1 rounds to pages)
  groups_.insert(name);
  return g;
}

bool WorkerMemory::Holds(const std::string& name, pid_t pid) const {
  std::istringstream in(ReadSmall(PathOf(name) + "/cgroup.procs"));
  std::string want = std::to_string(pid);
  for (std::string p; in >> p;) {
    if (p == want) return true;
  }
  return false;
}

uint64_t WorkerMemory::OomKills(const std::string& name) const {
  return Field(ReadSmall(PathOf(name) + "/" + events_file_), "oom_kill");
}

void WorkerMemory::Remove(const std::string& name) {
  if (groups_.erase(name) == 0) return;
  std::string path = PathOf(name);
  if (kind_ == "cgroup v2") (void)WriteSmall(path + "/cgroup.kill", "1");  // kernels >= 5.14
  if (rmdir(path.c_str()) != 0 && errno == EBUSY) leftovers_.insert(name);
}

void WorkerMemory::RemoveLeftovers() {
  for (auto it = leftovers_.begin(); it != leftovers_.end();) {
    bool gone = rmdir(PathOf(*it).c_str()) == 0 || errno == ENOENT;
    it = gone ? leftovers_.erase(it) : std::next(it);
  }
}

}  // namespace shoal
