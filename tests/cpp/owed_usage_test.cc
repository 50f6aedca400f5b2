// The worker's owed usage notices (worker/owed_usage.h) on a real socketpair: a reply that
// carries the owner's usage settles its notice (no message of its own); another owner's
// reply, or one without usage, does not; what is owed goes only when nothing is waiting.
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "shm/output_arenas.h"
#include "tests/cpp/catch.h"
#include "worker/owed_usage.h"

using namespace shoal;

namespace {

uint64_t ArenaOf(uint32_t lane, bool torchscript) {
  return kWorkerArenaBit | (uint64_t{OutputOwnerTag(lane, torchscript)} << 40) | 7;
}

ReleaseNotice Released(uint32_t lane, bool torchscript) {
  Writer w;
  w.Map(2);
  w.Key("arena"); w.Val(ArenaOf(lane, torchscript));
  w.Key("blocks"); w.pk().pack_array(1); w.Val(uint64_t{4096});
  auto oh = Decode(std::string(w.body()));
  REQUIRE(oh.ok());
  auto r = ReadRelease(MapView(oh->get()));
  REQUIRE(r.has_value());
  return *r;
}

std::string ReplyWithUsage(uint32_t owner) {
  Writer w;
  w.Map(4);
  w.Key("v"); w.Val(1);
  w.Key("id"); w.Val(9);
  w.Key("ok"); w.Val(true);
  w.Key("usage"); w.Map(3);
  w.Key("owner"); w.Val(owner);
  w.Key("bytes"); w.Val(0);
  w.Key("arenas"); w.Val(1);
  return std::string(w.body());
}

struct Wire {
  int worker = -1, shoald = -1;
  FrameReader reader;
  std::vector<int> fds;
  std::vector<std::string> sent;  // notices, in order
  Wire() {
    int sv[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    worker = sv[0];
    shoald = sv[1];
  }
  ~Wire() {
    close(worker);
    close(shoald);
  }
  // Recv as the worker's reading thread calls it. shoald's next message is already
  // waiting (`waiting`), or is written as the first notice goes out (before the read blocks).
  std::string Next(OwedUsage* owed, bool waiting) {
    if (waiting) REQUIRE(SendAll(shoald, EncodeFrame("next")).ok());
    auto body = owed->Recv(
        worker, &reader, &fds,
        [&](const std::string& notice) {
          sent.push_back(notice);
          return sent.size() > 1 || SendAll(shoald, EncodeFrame("next")).ok();
        },
        [&](const ReleaseNotice& r) { return "usage of owner " + std::to_string(OutputOwnerTag(r.lane, r.torchscript)); });
    REQUIRE(body.ok());
    return *body;
  }
};

}  // namespace

TEST_CASE("a release reads its owner from the arena id; other arenas are not a worker's", "[owed_usage]") {
  auto r = Released(3, true);
  CHECK(r.lane == 3);
  CHECK(r.torchscript);
  CHECK(r.blocks == std::vector<uint64_t>{4096});
  Writer w;
  w.Map(1);
  w.Key("arena"); w.Val(uint64_t{5});  // a client arena
  auto oh = Decode(std::string(w.body()));
  REQUIRE(oh.ok());
  CHECK_FALSE(ReadRelease(MapView(oh->get())).has_value());
}

TEST_CASE("a reply carrying the owner's usage settles its notice", "[owed_usage]") {
  OwedUsage owed;
  owed.Owe(Released(0, false));
  REQUIRE(owed.owes());
  owed.Settle(ReplyWithUsage(OutputOwnerTag(0, false)));
  CHECK_FALSE(owed.owes());
}

TEST_CASE("another owner's reply, or a reply without usage, settles nothing; the notice goes when idle",
          "[owed_usage]") {
  Wire wire;
  OwedUsage owed;
  owed.Owe(Released(0, true));  // the TorchScript runner's
  owed.Settle(ReplyWithUsage(OutputOwnerTag(0, false)));  // the Python runner's reply
  owed.Settle(std::string(ErrorReply(9, Status::Internal("boom"))));
  CHECK(owed.owes());
  // Nothing waiting: the notice goes before the read blocks (the message comes after it).
  CHECK(wire.Next(&owed, /*waiting=*/false) == "next");
  CHECK(wire.sent == std::vector<std::string>{"usage of owner " + std::to_string(OutputOwnerTag(0, true))});
  CHECK_FALSE(owed.owes());
}

TEST_CASE("while messages are waiting, notices wait too", "[owed_usage]") {
  Wire wire;
  OwedUsage owed;
  owed.Owe(Released(1, false));
  CHECK(wire.Next(&owed, /*waiting=*/true) == "next");
  CHECK(wire.sent.empty());
  CHECK(owed.owes());
}
