#include "supervisor/process_memory.h"

#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
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

ProcessMemorySampler::ProcessMemorySampler(std::chrono::milliseconds period)
    : period_(period), thread_([this] { Loop(); }) {}

ProcessMemorySampler::~ProcessMemorySampler() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void ProcessMemorySampler::Track(pid_t pid) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    figures_.emplace(pid, ProcessMemory{});
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
}

ProcessMemory ProcessMemorySampler::Get(pid_t pid) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = figures_.find(pid);
  return it == figures_.end() ? ProcessMemory{} : it->second;
}

void ProcessMemorySampler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    std::vector<std::pair<pid_t, std::shared_ptr<const int>>> pids;  // the file, if the process gave one
    for (const auto& [pid, m] : figures_) {
      auto f = files_.find(pid);
      pids.emplace_back(pid, f == files_.end() ? nullptr : f->second);
    }
    fresh_ = false;
    lock.unlock();
    std::vector<std::pair<pid_t, ProcessMemory>> read;
    for (const auto& [pid, file] : pids) {
      read.emplace_back(pid, file ? ReadProcessMemoryFile(*file) : ReadProcessMemory(pid));
    }
    pids.clear();  // an untracked process's file closes now, not after the wait
    lock.lock();
    for (const auto& [pid, m] : read) {
      if (auto it = figures_.find(pid); it != figures_.end()) it->second = m;  // not untracked meanwhile
    }
    wake_.wait_for(lock, period_, [this] { return stop_ || fresh_; });
  }
}

}  // namespace shoal
