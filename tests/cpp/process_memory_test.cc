// ProcessMemorySampler reads /proc off the caller's thread; Get never blocks on /proc.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "supervisor/process_memory.h"
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
