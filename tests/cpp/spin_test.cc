// Polling before blocking (protocol/spin.h): a receiver with a budget reads what comes within
// it without sleeping, and still sleeps (and wakes) for what comes later. "Sleeping" is read
// from the kernel: a thread's voluntary context switches count the times it blocked.
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/spin.h"
#include "supervisor/config.h"
#include "supervisor/event_loop.h"
#include "supervisor/own_cgroup.h"
#include "tests/cpp/catch.h"

using namespace shoal;
using namespace std::chrono_literals;

namespace {
// Times the calling thread has blocked so far.
long VoluntarySwitches() {
  std::ifstream in("/proc/thread-self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("voluntary_ctxt_switches:", 0) == 0) return std::stol(line.substr(line.find(':') + 1));
  }
  FAIL("no voluntary_ctxt_switches in /proc/thread-self/status");
  return -1;
}

// Sets the budget for one test and puts the old one back.
struct Budget {
  explicit Budget(std::chrono::microseconds b) : old(SpinBudget()) { SetSpinBudget(b); }
  ~Budget() { SetSpinBudget(old); }
  std::chrono::microseconds old;
};

// RecvFrame of a frame another thread sends `after` from now (busy-waiting, so that it is
// not late for want of a wake-up itself); returns how often the reader blocked.
long BlocksToReceive(std::chrono::microseconds after, std::string* got) {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  bool sent = false;
  std::thread peer([&] {
    auto at = std::chrono::steady_clock::now() + after;
    while (std::chrono::steady_clock::now() < at) CpuRelax();
    sent = SendAll(sv[1], EncodeFrame("reply")).ok();
  });
  FrameReader reader;
  std::vector<int> fds;
  long before = VoluntarySwitches();
  auto body = RecvFrame(sv[0], &reader, &fds);
  long blocks = VoluntarySwitches() - before;
  peer.join();
  close(sv[0]);
  close(sv[1]);
  REQUIRE(sent);
  REQUIRE(body.ok());
  *got = *body;
  return blocks;
}

// The fewest blocks of three tries (a reader preempted for long on a busy machine may
// outlast its budget once).
long FewestBlocksToReceive(std::chrono::microseconds after, std::string* got) {
  long fewest = BlocksToReceive(after, got);
  for (int i = 0; i < 2 && fewest > 0; ++i) fewest = std::min(fewest, BlocksToReceive(after, got));
  return fewest;
}
}  // namespace

TEST_CASE("SetSpinBudget sets the budget, and SHOAL_SPIN_US for the children started later", "[spin]") {
  Budget keep(0us);
  SetSpinBudget(250us);
  CHECK(SpinBudget() == 250us);
  CHECK(std::string(getenv("SHOAL_SPIN_US")) == "250");  // what children inherit
}

TEST_CASE("a receiver with a budget reads a frame that comes within it without sleeping", "[spin]") {
  std::string got;
  {
    Budget spin(std::chrono::microseconds(10000));  // 10 ms: the frame comes after 1
    CHECK(FewestBlocksToReceive(1000us, &got) == 0);
    CHECK(got == "reply");
  }
  Budget none(0us);
  CHECK(BlocksToReceive(1000us, &got) >= 1);  // without one it sleeps in recvmsg
}

TEST_CASE("a receiver whose budget runs out sleeps and still gets the frame", "[spin]") {
  Budget spin(200us);
  std::string got;
  CHECK(BlocksToReceive(50000us, &got) >= 1);
  CHECK(got == "reply");
}

TEST_CASE("a receiver does not poll past its deadline", "[spin]") {
  Budget spin(std::chrono::microseconds(10000));
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  FrameReader reader;
  std::vector<int> fds;
  // A deadline already past reads what has come (nothing) and returns: 20 such reads
  // would take 200 ms if each polled its budget.
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 20; ++i) {
    auto none = RecvFrame(sv[0], &reader, &fds, t0 - 1s);
    REQUIRE(!none.ok());
    REQUIRE(none.status().code() == Code::kTimeout);
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 100ms);
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("shoald's loop with a budget runs a handler ready within it without sleeping", "[spin]") {
  for (auto [budget, sleeps] : {std::pair{std::chrono::microseconds(20000), false}, std::pair{0us, true}}) {
    CAPTURE(budget.count());
    boost::asio::io_context io;
    boost::asio::steady_timer timer(io, 2ms);
    bool ran = false;
    timer.async_wait([&](const boost::system::error_code&) { ran = true; });
    long before = VoluntarySwitches();
    RunSpinning(io, budget);  // returns when no work is left
    long blocks = VoluntarySwitches() - before;
    CHECK(ran);
    CHECK((blocks > 0) == sleeps);
  }
}

TEST_CASE("spin_us auto polls where shoald has two CPUs a worker interpreter and four more", "[spin]") {
  SupervisorConfig defaults;
  CHECK(defaults.spin_us == kAutoSpin);
  SupervisorConfig cfg;
  REQUIRE(ParseConfig("spin_us = auto\n", "shoald.conf", &cfg).ok());
  CHECK(cfg.spin_us == kAutoSpin);
  REQUIRE(ParseConfig("spin_us = 0\n", "shoald.conf", &cfg).ok());
  CHECK(cfg.spin_us == 0);

  const char* had = getenv("SHOAL_SPIN_US");
  std::string saved = had != nullptr ? had : "";
  unsetenv("SHOAL_SPIN_US");
  CHECK(StartupSpinBudget(kAutoSpin, 16, 1).budget == kAutoSpinBudget);   // the GPU host, one worker
  CHECK(StartupSpinBudget(kAutoSpin, 16, 6).budget == kAutoSpinBudget);   // 2 x 6 + 4 = 16
  CHECK(StartupSpinBudget(kAutoSpin, 16, 7).budget == 0us);               // 18 wanted
  CHECK(StartupSpinBudget(kAutoSpin, 2, 1).budget == 0us);                // the 2-core VM
  CHECK(StartupSpinBudget(kAutoSpin, 128, 16).budget == kAutoSpinBudget);
  CHECK(StartupSpinBudget(0, 128, 1).budget == 0us);     // a number is the budget, whatever the CPUs
  CHECK(StartupSpinBudget(120, 2, 4).budget == 120us);
  setenv("SHOAL_SPIN_US", "75", 1);  // auto defers to the environment, CPUs or not
  CHECK(StartupSpinBudget(kAutoSpin, 2, 1).budget == 75us);
  CHECK(StartupSpinBudget(kAutoSpin, 128, 1).budget == 75us);
  CHECK(!StartupSpinBudget(kAutoSpin, 128, 1).bad_environment);
  setenv("SHOAL_SPIN_US", "soon", 1);  // read as SpinBudget reads it: nothing valid, no polling
  CHECK(StartupSpinBudget(kAutoSpin, 128, 1).budget == 0us);
  CHECK(StartupSpinBudget(kAutoSpin, 128, 1).bad_environment);  // shoald warns
  setenv("SHOAL_SPIN_US", "0", 1);
  CHECK(!StartupSpinBudget(kAutoSpin, 128, 1).bad_environment);
  setenv("SHOAL_SPIN_US", "", 1);      // empty: as if unset
  CHECK(StartupSpinBudget(kAutoSpin, 128, 1).budget == kAutoSpinBudget);
  CHECK(StartupSpinBudget(0, 128, 1).budget == 0us);  // an explicit number wins over the environment
  if (had != nullptr) {
    setenv("SHOAL_SPIN_US", saved.c_str(), 1);
  } else {
    unsetenv("SHOAL_SPIN_US");
  }
}

TEST_CASE("RecvFrameUntilSignal returns once its polling ends, so signals that came meanwhile are seen", "[spin]") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  FrameReader reader;
  std::vector<int> fds;
  bool interrupted = false;
  {
    Budget spin(2000us);
    auto first = RecvFrameUntilSignal(sv[0], &reader, &fds, std::nullopt, true, &interrupted);
    REQUIRE(first.ok());
    CHECK(interrupted);  // polled 2 ms, nothing came: back before it blocks
    // Without polling it blocks (here: until a deadline) and is not interrupted.
    auto second = RecvFrameUntilSignal(sv[0], &reader, &fds, std::chrono::steady_clock::now() + 20ms, false,
                                       &interrupted);
    REQUIRE(!second.ok());
    CHECK(second.status().code() == Code::kTimeout);
    CHECK(!interrupted);
    REQUIRE(SendAll(sv[1], EncodeFrame("reply")).ok());
    auto third = RecvFrameUntilSignal(sv[0], &reader, &fds, std::nullopt, true, &interrupted);
    REQUIRE(third.ok());
    CHECK(*third == "reply");  // a frame there is read while polling, no return before it
    CHECK(!interrupted);
  }
  {
    Budget none(0us);  // no polling: no extra return
    REQUIRE(SendAll(sv[1], EncodeFrame("later")).ok());
    auto got = RecvFrameUntilSignal(sv[0], &reader, &fds, std::nullopt, true, &interrupted);
    REQUIRE(got.ok());
    CHECK(*got == "later");
    CHECK(!interrupted);
  }
  close(sv[0]);
  close(sv[1]);
}

TEST_CASE("spin_us auto counts the CPUs the cgroup quotas allow, the lowest of shoald's and its ancestors'", "[spin]") {
  char tmpl[] = "/tmp/shoal-cgroup-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string root = tmpl, parent = root + "/system.slice", own = parent + "/shoald.service";
  REQUIRE(mkdir(parent.c_str(), 0755) == 0);
  REQUIRE(mkdir(own.c_str(), 0755) == 0);
  auto write = [](const std::string& path, const std::string& text) { std::ofstream(path) << text; };
  CHECK(!CgroupCpuQuota(own, root).has_value());  // no files: no quota
  write(root + "/cpu.max", "max 100000\n");
  write(own + "/cpu.max", "max 100000\n");
  CHECK(!CgroupCpuQuota(own, root).has_value());  // "max": no quota
  write(parent + "/cpu.max", "250000 100000\n");  // 2.5 CPUs: 3
  CHECK(CgroupCpuQuota(own, root) == 3);
  write(own + "/cpu.max", "150000 100000\n");     // lower below it: 2
  CHECK(CgroupCpuQuota(own, root) == 2);
  write(own + "/cpu.cfs_quota_us", "50000\n");    // v1 files: half a CPU counts as one
  write(own + "/cpu.cfs_period_us", "100000\n");
  CHECK(CgroupCpuQuota(own, root) == 1);
  write(own + "/cpu.cfs_quota_us", "-1\n");       // v1 "none"
  CHECK(CgroupCpuQuota(own, root) == 2);
  // What it means for polling: 16 CPUs by affinity, 2 by quota.
  CHECK(StartupSpinBudget(kAutoSpin, std::min(16, *CgroupCpuQuota(own, root)), 1).budget == 0us);
  std::filesystem::remove_all(root);
}
