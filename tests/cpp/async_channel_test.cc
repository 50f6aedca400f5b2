// AsyncChannel on real socketpairs: what a SendBatch holds goes out as one write (a later
// frame's fds ride on its first byte), at most kMaxFdsPerFrame descriptors a write, a
// read handler's sends are batched, and a reply sent just before Close() is not lost.
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <chrono>
#include <memory>
#include <thread>
#include <string>
#include <vector>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "supervisor/async_channel.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

struct Pair {
  int mine = -1;  // the AsyncChannel's end
  int peer = -1;  // the test reads and writes here (blocking)
  Pair() {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    mine = sv[0];
    peer = sv[1];
  }
  ~Pair() { close(peer); }
};

std::shared_ptr<OwnedFd> SomeFd() {
  int p[2];
  REQUIRE(pipe(p) == 0);
  close(p[1]);
  return std::make_shared<OwnedFd>(p[0]);
}

// One recvmsg of exactly `n` bytes (or fewer) from `sock`: the bytes and the fds with them.
std::pair<std::string, std::vector<int>> RecvOnce(int sock, size_t n) {
  std::string buf(n, '\0');
  std::vector<int> fds;
  auto got = RecvSome(sock, reinterpret_cast<uint8_t*>(buf.data()), n, &fds);
  REQUIRE(got.ok());
  buf.resize(*got);
  return {buf, fds};
}

}  // namespace

TEST_CASE("sends outside a batch are written at once", "[async_channel]") {
  boost::asio::io_context io;
  Pair p;
  auto ch = std::make_shared<AsyncChannel>(io, p.mine);
  ch->Send("one");
  auto [bytes, fds] = RecvOnce(p.peer, 64);  // the loop never ran: Send wrote it
  CHECK(bytes == EncodeFrame("one"));
  CHECK(fds.empty());
}

TEST_CASE("a batch writes its frames together: a later frame's fds come with the first byte", "[async_channel]") {
  boost::asio::io_context io;
  Pair p;
  auto ch = std::make_shared<AsyncChannel>(io, p.mine);
  {
    SendBatch batch;
    ch->Send("release");
    ch->Send("infer", {SomeFd()});
    // Nothing is written while the batch is open.
    std::vector<int> none;
    uint8_t b[8];
    CHECK(RecvSome(p.peer, b, sizeof(b), &none, MSG_DONTWAIT).status().code() == Code::kUnavailable);
  }
  // Reading only the first frame's bytes already brings the second frame's fd: one write.
  auto [first, fds] = RecvOnce(p.peer, EncodeFrame("release").size());
  CHECK(first == EncodeFrame("release"));
  REQUIRE(fds.size() == 1);
  CloseAll(&fds);
  auto [second, more] = RecvOnce(p.peer, 64);
  CHECK(second == EncodeFrame("infer"));
  CHECK(more.empty());
}

TEST_CASE("a batch puts at most kMaxFdsPerFrame fds in one write", "[async_channel]") {
  boost::asio::io_context io;
  Pair p;
  auto ch = std::make_shared<AsyncChannel>(io, p.mine);
  constexpr int kFrames = 20;
  {
    SendBatch batch;
    for (int i = 0; i < kFrames; ++i) ch->Send("arena " + std::to_string(i), {SomeFd()});
  }
  FrameReader reader;
  std::vector<int> fds;
  for (int i = 0; i < kFrames; ++i) {
    auto body = RecvFrame(p.peer, &reader, &fds);  // fails on MSG_CTRUNC (fds lost)
    REQUIRE(body.ok());
    CHECK(*body == "arena " + std::to_string(i));
    CHECK(fds.size() >= static_cast<size_t>(i + 1));  // each frame's fd is there by its first byte
  }
  CHECK(fds.size() == kFrames);
  CloseAll(&fds);
}

TEST_CASE("what a read's frame handlers send to another channel goes out in one write", "[async_channel]") {
  boost::asio::io_context io;
  Pair client, worker;
  auto from_client = std::make_shared<AsyncChannel>(io, client.mine);
  auto to_worker = std::make_shared<AsyncChannel>(io, worker.mine);
  int frames = 0;
  from_client->Start(
      [&](std::string body, std::vector<int>*) {
        ++frames;
        if (body == "release") to_worker->Send("release");
        if (body == "infer") to_worker->Send("infer", {SomeFd()});
      },
      [](const Status&) {});
  // The client's release and next request arrive together (one write), as ClientWriter sends them.
  REQUIRE(SendAll(client.peer, EncodeFrame("release") + EncodeFrame("infer")).ok());
  while (frames < 2) io.run_one();
  auto [first, fds] = RecvOnce(worker.peer, EncodeFrame("release").size());
  CHECK(first == EncodeFrame("release"));
  CHECK(fds.size() == 1);  // the request's fd came with the release's bytes: one sendmsg
  CloseAll(&fds);
  from_client->Close();
  to_worker->Close();
}

TEST_CASE("a reply sent inside a batch just before Close() still goes", "[async_channel]") {
  boost::asio::io_context io;
  Pair p;
  auto ch = std::make_shared<AsyncChannel>(io, p.mine);
  bool handled = false;
  ch->Start(
      [&](std::string, std::vector<int>*) {
        ch->Send("goodbye");  // held by the read's batch...
        ch->Close();          // ...and closed before the batch ends
        handled = true;
      },
      [](const Status&) {});
  REQUIRE(SendAll(p.peer, EncodeFrame("bye?")).ok());
  while (!handled) io.run_one();
  FrameReader reader;
  std::vector<int> fds;
  auto body = RecvFrame(p.peer, &reader, &fds);
  REQUIRE(body.ok());
  CHECK(*body == "goodbye");
  CHECK(RecvFrame(p.peer, &reader, &fds).status().code() == Code::kUnavailable);  // then EOF
}

TEST_CASE("a peer whose replies pile up inside one read's batch is paused, then served in full", "[async_channel]") {
  // 12 requests in one write, each answered with 200 KiB: past 1 MiB of unsent replies the
  // channel stops handling requests; once the batch's writes drain (the peer reads),
  // handling resumes with the requests already read, and every reply comes, in order.
  boost::asio::io_context io;
  Pair p;
  auto ch = std::make_shared<AsyncChannel>(io, p.mine);
  constexpr int kRequests = 12;
  int handled = 0;
  ch->Start(
      [&](std::string body, std::vector<int>*) {
        ++handled;
        ch->Send(body + std::string(200 << 10, 'x'));
      },
      [](const Status& why) { FAIL("closed: " << why.ToString()); });
  std::string all;
  for (int i = 0; i < kRequests; ++i) all += EncodeFrame("request " + std::to_string(i));
  REQUIRE(SendAll(p.peer, all).ok());
  timeval patience{20, 0};  // a reader that gets nothing gives up instead of hanging the test
  setsockopt(p.peer, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof(patience));
  std::vector<std::string> replies;
  std::thread reader([&] {
    FrameReader r;
    std::vector<int> fds;
    while (replies.size() < kRequests) {
      auto body = RecvFrame(p.peer, &r, &fds);
      if (!body.ok()) return;
      replies.push_back(body->substr(0, body->find('x')));
    }
  });
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (handled < kRequests && std::chrono::steady_clock::now() < until) io.run_for(std::chrono::milliseconds(50));
  io.run_for(std::chrono::milliseconds(200));  // the last writes
  reader.join();
  CHECK(handled == kRequests);
  REQUIRE(replies.size() == kRequests);
  for (int i = 0; i < kRequests; ++i) CHECK(replies[i] == "request " + std::to_string(i));
  ch->Close();
}
