// ProcessMemorySampler reads /proc off the caller's thread; Get never blocks on /proc.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "supervisor/process_memory.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("the memory sampler reports a tracked process's Rss and Pss", "[memory]") {
  ProcessMemorySampler sampler(std::chrono::milliseconds(20));
  CHECK(sampler.Get(getpid()).rss_kb == 0);  // untracked
  sampler.Track(getpid());
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (sampler.Get(getpid()).pss_kb == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto m = sampler.Get(getpid());
  CHECK(m.pss_kb > 0);
  CHECK(m.rss_kb >= m.pss_kb);
  sampler.Untrack(getpid());
  CHECK(sampler.Get(getpid()).rss_kb == 0);
}

TEST_CASE("the memory sampler reports zeros for a process that is gone", "[memory]") {
  ProcessMemorySampler sampler(std::chrono::milliseconds(10));
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  sampler.Track(child);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(sampler.Get(child).pss_kb == 0);
}
