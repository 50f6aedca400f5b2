// ProcessMemorySampler reads /proc off the caller's thread; Get never blocks on /proc.
#include <signal.h>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>
#include <vector>

#include "supervisor/process_memory.h"
#include "supervisor/worker_memory.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

// The pid of a process that has exited and been reaped.
pid_t GonePid() {
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  return child;
}

// Polls `done` for up to 5 s.
template <typename Pred>
void WaitUntil(Pred done) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!done() && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

}  // namespace

TEST_CASE("the memory sampler reports a tracked process's Rss and Pss", "[memory]") {
  ProcessMemorySampler sampler(std::chrono::milliseconds(20));
  CHECK(sampler.Get(getpid()).rss_kb == 0);  // untracked
  sampler.Track(getpid());
  WaitUntil([&] { return sampler.Get(getpid()).pss_kb > 0; });
  auto m = sampler.Get(getpid());
  CHECK(m.pss_kb > 0);
  CHECK(m.rss_kb >= m.pss_kb);
  sampler.Untrack(getpid());
  CHECK(sampler.Get(getpid()).rss_kb == 0);
}

TEST_CASE("the memory sampler reports zeros for a process that is gone", "[memory]") {
  ProcessMemorySampler sampler(std::chrono::milliseconds(10));
  pid_t child = GonePid();
  sampler.Track(child);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(sampler.Get(child).pss_kb == 0);
}

namespace {

// A child in a process group of its own (like a worker) holding `mib` MiB of anonymous
// memory it touched, until killed.
pid_t ChildHolding(size_t mib) {
  int ready[2];
  REQUIRE(pipe(ready) == 0);
  pid_t child = fork();
  if (child == 0) {
    setpgid(0, 0);
    std::vector<char> hold(mib << 20, 1);
    (void)!write(ready[1], "x", 1);
    for (;;) pause();
  }
  char x;
  (void)!read(ready[0], &x, 1);
  close(ready[0]);
  close(ready[1]);
  return child;
}

// Waits (bounded) for the sampler to report a pid over its limit.
struct OverLimit {
  std::mutex mu;
  std::vector<std::pair<pid_t, std::string>> seen;
  ProcessMemorySampler::OverLimitFn fn() {
    return [this](pid_t pid, const std::string& why) {
      std::lock_guard<std::mutex> lock(mu);
      seen.emplace_back(pid, why);
    };
  }
  std::vector<std::pair<pid_t, std::string>> WaitFor(size_t n) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (seen.size() >= n || std::chrono::steady_clock::now() > deadline) return seen;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
};

}  // namespace

TEST_CASE("the sampler reports a process group over its anonymous memory limit, once", "[memory]") {
  OverLimit over;
  ProcessMemorySampler sampler(std::chrono::milliseconds(20), over.fn());
  pid_t small = ChildHolding(8);
  pid_t big = ChildHolding(96);
  sampler.Track(small, MemoryWatch{64 << 20, "", ""});
  sampler.Track(big, MemoryWatch{64 << 20, "", ""});
  auto seen = over.WaitFor(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // more rounds: still reported once
  seen = over.WaitFor(1);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].first == big);
  CHECK(seen[0].second.find("past worker_memory_mb = 64 MiB") != std::string::npos);
  for (pid_t p : {small, big}) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
}

TEST_CASE("the sampler reports a worker whose cgroup limit file was changed", "[memory]") {
  OverLimit over;
  ProcessMemorySampler sampler(std::chrono::milliseconds(20), over.fn());
  std::string file = std::filesystem::temp_directory_path() / ("shoal-limit-" + std::to_string(getpid()));
  std::ofstream(file) << "1048576\n";
  sampler.Track(getpid(), MemoryWatch{0, file, "1048576"});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(over.WaitFor(0).empty());  // as written: fine
  std::ofstream(file) << "9223372036854771712\n";
  auto seen = over.WaitFor(1);
  std::filesystem::remove(file);
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].first == getpid());
  CHECK(seen[0].second.find("limit was changed") != std::string::npos);
}

TEST_CASE("a worker's memory limit: a share of the machine by default, as configured otherwise", "[memory]") {
  WorkerMemory limits(false);  // no cgroups: sizes only
  CHECK(limits.cgroup_kind().empty());
  SupervisorConfig cfg;
  cfg.workers = 1;
  uint64_t one = limits.LimitFor(cfg);
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  uint64_t total_kb = 0;
  meminfo >> key >> total_kb;
  REQUIRE(key == "MemTotal:");
  CHECK(one >= uint64_t{512} << 20);
  CHECK(one <= total_kb * 1024 / 4 * 3);
  cfg.workers = 4;
  CHECK(limits.LimitFor(cfg) == std::max<uint64_t>(one / 4, uint64_t{512} << 20));
  cfg.worker_memory_mb = 300;
  CHECK(limits.LimitFor(cfg) == uint64_t{300} << 20);
  cfg.worker_memory_mb = 0;
  CHECK(limits.LimitFor(cfg) == 0);
}

TEST_CASE("the memory sampler reads the smaps file a process handed over, not its pid's", "[memory]") {
  // A non-dumpable worker's /proc/PID/smaps_rollup cannot be opened by a shoald that is not
  // root; the worker opens its own and passes it. Here the pid names no process at all.
  ProcessMemorySampler sampler(std::chrono::milliseconds(10));
  pid_t gone = GonePid();
  sampler.Track(gone);
  int own = open("/proc/self/smaps_rollup", O_RDONLY | O_CLOEXEC);
  REQUIRE(own >= 0);
  sampler.ReadFrom(gone, own);
  WaitUntil([&] { return sampler.Get(gone).pss_kb > 0; });
  CHECK(sampler.Get(gone).pss_kb > 0);
  CHECK(sampler.Get(gone).rss_kb >= sampler.Get(gone).pss_kb);
  sampler.Untrack(gone);  // closes the file (once a round reading it is over)
  WaitUntil([&] { return fcntl(own, F_GETFD) == -1; });
  CHECK(fcntl(own, F_GETFD) == -1);
}
