// Polling before blocking (protocol/spin.h): a receiver with a budget reads what comes within
// it without sleeping, and still sleeps (and wakes) for what comes later. "Sleeping" is read
// from the kernel: a thread's voluntary context switches count the times it blocked.
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <fstream>
#include <string>
#include <thread>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/spin.h"
#include "supervisor/event_loop.h"
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

// RecvFrame of a frame another thread sends `after` from now; returns the reader's blocks.
long BlocksToReceive(std::chrono::milliseconds after, std::string* got) {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  std::thread peer([&] {
    std::this_thread::sleep_for(after);
    REQUIRE(SendAll(sv[1], EncodeFrame("reply")).ok());
  });
  FrameReader reader;
  std::vector<int> fds;
  long before = VoluntarySwitches();
  auto body = RecvFrame(sv[0], &reader, &fds);
  long blocks = VoluntarySwitches() - before;
  peer.join();
  close(sv[0]);
  close(sv[1]);
  REQUIRE(body.ok());
  *got = *body;
  return blocks;
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
    Budget spin(std::chrono::microseconds(10000));  // 10 ms: the frame comes after 2
    CHECK(BlocksToReceive(2ms, &got) == 0);
    CHECK(got == "reply");
  }
  Budget none(0us);
  CHECK(BlocksToReceive(2ms, &got) >= 1);  // without one it sleeps in recvmsg
}

TEST_CASE("a receiver whose budget runs out sleeps and still gets the frame", "[spin]") {
  Budget spin(200us);
  std::string got;
  CHECK(BlocksToReceive(50ms, &got) >= 1);
  CHECK(got == "reply");
}

TEST_CASE("a receiver polling sees the peer hang up", "[spin]") {
  Budget spin(std::chrono::microseconds(10000));
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  close(sv[1]);
  FrameReader reader;
  std::vector<int> fds;
  auto body = RecvFrame(sv[0], &reader, &fds);
  REQUIRE(!body.ok());
  CHECK(body.status().code() == Code::kUnavailable);
  close(sv[0]);
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
