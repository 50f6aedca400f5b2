#include "supervisor/process_memory.h"

#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace shoal {

ProcessMemory ReadProcessMemory(pid_t pid) {
  ProcessMemory m;
  std::ifstream f("/proc/" + std::to_string(pid) + "/smaps_rollup");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("Rss:", 0) == 0) m.rss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
    if (line.rfind("Pss:", 0) == 0) m.pss_kb = std::strtoull(line.c_str() + 4, nullptr, 10);
  }
  return m;
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

void ProcessMemorySampler::Untrack(pid_t pid) {
  std::lock_guard<std::mutex> lock(mu_);
  figures_.erase(pid);
}

ProcessMemory ProcessMemorySampler::Get(pid_t pid) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = figures_.find(pid);
  return it == figures_.end() ? ProcessMemory{} : it->second;
}

void ProcessMemorySampler::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    std::vector<pid_t> pids;
    for (const auto& [pid, m] : figures_) pids.push_back(pid);
    fresh_ = false;
    lock.unlock();
    std::vector<std::pair<pid_t, ProcessMemory>> read;
    for (pid_t pid : pids) read.emplace_back(pid, ReadProcessMemory(pid));
    lock.lock();
    for (const auto& [pid, m] : read) {
      if (auto it = figures_.find(pid); it != figures_.end()) it->second = m;  // not untracked meanwhile
    }
    wake_.wait_for(lock, period_, [this] { return stop_ || fresh_; });
  }
}

}  // namespace shoal
