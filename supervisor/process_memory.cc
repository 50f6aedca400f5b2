#include "supervisor/process_memory.h"

#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace shoal {

namespace {

ProcessMemory Parse(std::istream& in) {
  ProcessMemory m;
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("Rss:", 0) == 0) m.rss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
    if (line.rfind("Pss:", 0) == 0) m.pss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
  }
  return m;
}

// The start of a small /proc file (empty when it cannot be read).
std::string ReadProcFile(const std::string& path) {
  char buf[4096];
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  ssize_t n = read(fd, buf, sizeof(buf));
  close(fd);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
}

// Anonymous memory resident in each process group of `groups`, in bytes: one pass over
// /proc, reading the status of the processes in those groups.
std::map<pid_t, uint64_t> GroupAnonymousBytes(const std::set<pid_t>& groups) {
  std::map<pid_t, uint64_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    std::string dir = std::string("/proc/") + e->d_name;
    // "PID (COMM) STATE PPID PGRP ...": COMM may hold spaces and parentheses.
    std::string stat = ReadProcFile(dir + "/stat");
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    char state = 0;
    long ppid = 0, pgrp = 0;
    if (std::sscanf(stat.c_str() + close_paren + 1, " %c %ld %ld", &state, &ppid, &pgrp) != 3) continue;
    if (groups.count(static_cast<pid_t>(pgrp)) == 0) continue;
    std::string status = ReadProcFile(dir + "/status");
    auto at = status.find("\nRssAnon:");
    if (at != std::string::npos) out[static_cast<pid_t>(pgrp)] += std::strtoull(status.c_str() + at + 9, nullptr, 10) << 10;
  }
  closedir(d);
  return out;
}

}  // namespace

ProcessMemory ReadProcessMemory(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  return Parse(f);
}

ProcessMemory ReadProcessMemoryFile(int fd) {
  std::string text;
  char buf[4096];
  for (off_t at = 0; text.size() < (64u << 10);) {  // smaps_rollup is about 1 kB
    ssize_t n = pread(fd, buf, sizeof(buf), at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<size_t>(n));
    at += n;
  }
  std::istringstream in(text);
  return Parse(in);
}

ProcessMemorySampler::ProcessMemorySampler(std::chrono::milliseconds period, OverLimitFn on_over)
    : period_(period), on_over_(std::move(on_over)), thread_([this] { Loop(); }) {}

ProcessMemorySampler::~ProcessMemorySampler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ProcessMemorySampler::Track(pid_t pid, MemoryWatch watch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    figures_.emplace(pid, ProcessMemory{});
    if (watch.limit_bytes > 0 || !watch.limit_file.empty()) watches_[pid] = std::move(watch);
    fresh_ = true;
  }
  wake_.notify_all();
}

void ProcessMemorySampler::ReadFrom(pid_t pid, int fd) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    files_[pid] = std::shared_ptr<const int>(new int(fd), [](const int* f) {
      close(*f);
      delete f;
    });
    fresh_ = true;
  }
  wake_.notify_all();
}

void ProcessMemorySampler::Untrack(pid_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  figures_.erase(pid);
  files_.erase(pid);
  watches_.erase(pid);
}

ProcessMemory ProcessMemorySampler::Get(pid_t pid) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = figures_.find(pid);
  return it == figures_.end() ? ProcessMemory{} : it->second;
}

void ProcessMemorySampler::CheckLimits(const std::map<pid_t, MemoryWatch>& watches) {
  std::set<pid_t> groups;  // a worker's pid is its process group's id (worker/sandbox.cc)
  for (const auto& [pid, w] : watches) {
    if (w.limit_bytes > 0) groups.insert(pid);
  }
  auto anonymous = groups.empty() ? std::map<pid_t, uint64_t>{} : GroupAnonymousBytes(groups);
  std::vector<std::pair<pid_t, std::string>> over;
  for (const auto& [pid, w] : watches) {
    if (w.limit_bytes > 0 && anonymous[pid] > w.limit_bytes) {
      over.emplace_back(pid, "its processes held " + std::to_string(anonymous[pid] >> 20) +
                                 " MiB of anonymous memory, past worker_memory_mb = " +
                                 std::to_string(w.limit_bytes >> 20) + " MiB; enforced by shoald's sampler");
    }
    if (!w.limit_file.empty()) {
      std::string now = ReadProcFile(w.limit_file);
      while (!now.empty() && (now.back() == '\n' || now.back() == ' ')) now.pop_back();
      if (now != w.limit_text) {  // gone (empty) or rewritten
        over.emplace_back(pid, "its memory cgroup's limit was changed from " + w.limit_text + " to '" + now +
                                   "' from inside; model code may not change it");
      }
    }
  }
  for (auto& [pid, why] : over) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = watches_.find(pid);
      if (it == watches_.end()) continue;  // untracked meanwhile: its pid may be another process's now
      watches_.erase(it);                  // reported once
    }
    if (on_over_) on_over_(pid, why);
  }
}

void ProcessMemorySampler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (int round = 0; !stop_; ++round) {
    bool sample = fresh_ || round % 4 == 0;  // Rss/Pss every period, limits four times as often
    std::vector<std::pair<pid_t, std::shared_ptr<const int>>> pids;  // the file, if the process gave one
    for (const auto& [pid, m] : figures_) {
      if (!sample) break;
      auto f = files_.find(pid);
      pids.emplace_back(pid, f == files_.end() ? nullptr : f->second);
    }
    fresh_ = false;
    auto watches = watches_;
    lock.unlock();
    if (!watches.empty()) CheckLimits(watches);
    std::vector<std::pair<pid_t, ProcessMemory>> read;
    for (const auto& [pid, file] : pids) {
      read.emplace_back(pid, file ? ReadProcessMemoryFile(*file) : ReadProcessMemory(pid));
    }
    pids.clear();  // an untracked process's file closes now, not after the wait
    lock.lock();
    for (const auto& [pid, m] : read) {
      if (auto it = figures_.find(pid); it != figures_.end()) it->second = m;  // not untracked meanwhile
    }
    wake_.wait_for(lock, period_ / 4, [this] { return stop_ || fresh_; });
  }
}

}  // namespace shoal
