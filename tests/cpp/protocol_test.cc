#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <limits>

#include "protocol/channel.h"
#include "protocol/descriptor.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/reply_bundle.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {
std::string Pack(const std::function<void(Writer&)>& f) {
  Writer w;
  f(w);
  return std::string(w.body());
}

Result<Descriptor> ParseDesc(int64_t offset, std::vector<int64_t> shape, std::vector<int64_t> strides,
                             const char* dtype = "float32") {
  std::string body = Pack([&](Writer& w) {
    w.Map(6);
    w.Key("arena"); w.Val(1);
    w.Key("block"); w.Val(offset);
    w.Key("offset"); w.Val(offset);
    w.Key("dtype"); w.Str(dtype);
    w.Key("shape"); w.Val(shape);
    w.Key("strides"); w.Val(strides);
  });
  auto oh = Decode(body);
  REQUIRE(oh.ok());
  return Descriptor::Parse(oh->get());
}
}  // namespace

TEST_CASE("frame reader reassembles frames split at any byte", "[protocol]") {
  std::string stream = EncodeFrame("hello") + EncodeFrame("shoal");
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    FrameReader r;
    std::vector<std::string> got;
    r.Append(reinterpret_cast<const uint8_t*>(stream.data()), cut);
    for (auto f = r.Next(); f.ok() && f->has_value(); f = r.Next()) got.push_back(**f);
    r.Append(reinterpret_cast<const uint8_t*>(stream.data()) + cut, stream.size() - cut);
    for (auto f = r.Next(); f.ok() && f->has_value(); f = r.Next()) got.push_back(**f);
    REQUIRE(got == std::vector<std::string>{"hello", "shoal"});
  }
}

TEST_CASE("frame reader rejects empty and oversized frames", "[protocol]") {
  FrameReader r(1024);
  std::string zero(4, '\0');
  r.Append(reinterpret_cast<const uint8_t*>(zero.data()), 4);
  REQUIRE(r.Next().status().code() == Code::kBadRequest);

  FrameReader big(1024);
  std::string hdr = EncodeFrame(std::string(2000, 'x')).substr(0, 4);
  big.Append(reinterpret_cast<const uint8_t*>(hdr.data()), 4);
  auto f = big.Next();
  REQUIRE(f.status().code() == Code::kBadRequest);
  REQUIRE(f.status().message().find("exceeds the limit") != std::string::npos);
}

TEST_CASE("decode bounds containers and rejects garbage", "[protocol]") {
  REQUIRE(Decode("\xc1").status().code() == Code::kBadRequest);
  REQUIRE(Decode(Pack([](Writer& w) { w.Val(std::vector<int>{1, 2}); })).status().message() == "message is not a map");
  std::string huge = Pack([](Writer& w) {
    w.Map(1);
    w.Key("x");
    w.Val(std::vector<int>(100000, 1));
  });
  REQUIRE(Decode(huge).status().message().find("size limit") != std::string::npos);
  std::string ok = Pack([](Writer& w) {
    w.Map(1);
    w.Key("op");
    w.Str("ping");
  });
  REQUIRE(Decode(ok.substr(0, ok.size() - 1)).status().code() == Code::kBadRequest);  // truncated
  auto oh = Decode(ok);
  REQUIRE(oh.ok());
  MapView m(oh->get());
  REQUIRE(*m.Str("op") == "ping");
  REQUIRE(m.Uint("op").status().message() == "field 'op' must be a non-negative integer");
  REQUIRE(m.Str("model").status().message() == "missing field 'model'");
}

TEST_CASE("descriptor extent follows strides", "[protocol]") {
  auto d = ParseDesc(64, {2, 3}, {3, 1});
  REQUIRE(d.ok());
  REQUIRE(*d->Extent() == 6 * 4);
  auto t = ParseDesc(64, {3, 2}, {1, 3});  // a transposed view spans the same bytes
  REQUIRE(*t->Extent() == 6 * 4);
  auto e = ParseDesc(64, {0, 5}, {5, 1});
  REQUIRE(*e->Extent() == 0);
}

TEST_CASE("descriptor bounds are checked against the arena", "[protocol]") {
  auto d = ParseDesc(4096 - 16, {4}, {1});
  REQUIRE(d->CheckBounds(4096).ok());
  auto past = ParseDesc(4096 - 12, {4}, {1});
  auto st = past->CheckBounds(4096);
  REQUIRE(st.code() == Code::kBadRequest);
  REQUIRE(st.message().find("outside arena 1") != std::string::npos);
  auto stride = ParseDesc(0, {2, 2}, {int64_t{1} << 40, 1});
  REQUIRE_FALSE(stride->CheckBounds(1 << 20).ok());
}

TEST_CASE("descriptor parsing rejects bad fields", "[protocol]") {
  REQUIRE(ParseDesc(0, {2}, {1}, "float128").status().message() == "unknown dtype 'float128'");
  REQUIRE(ParseDesc(0, {2, 2}, {1}).status().message().find("differ in length") != std::string::npos);
  REQUIRE(ParseDesc(0, std::vector<int64_t>(17, 1), std::vector<int64_t>(17, 1)).status().message().find(
              "dimensions") != std::string::npos);
  // 2^48 x 2^48 elements overflows any arena: refused rather than wrapped around
  auto big = ParseDesc(0, {int64_t{1} << 48, int64_t{1} << 48}, {int64_t{1} << 48, 1});
  REQUIRE_FALSE(big.ok());
}

TEST_CASE("error replies round-trip code, message and traceback", "[protocol]") {
  std::string body = ErrorReply(7, Status(Code::kModelError, "model 'm' raised"), "Traceback...");
  auto oh = Decode(body);
  REQUIRE(oh.ok());
  MapView m(oh->get());
  REQUIRE(*m.Uint("id") == 7);
  std::string tb;
  Status st = StatusFromReply(m, &tb);
  REQUIRE(st.code() == Code::kModelError);
  REQUIRE(st.message() == "model 'm' raised");
  REQUIRE(tb == "Traceback...");
}

TEST_CASE("a poisoned error reply says so beside its error; others do not", "[protocol]") {
  auto plain = Decode(ErrorReply(7, Status(Code::kModelError, "boom")));
  REQUIRE(plain.ok());
  CHECK_FALSE(MapView(plain->get()).Bool("poisoned").ok());
  auto poisoned = Decode(ErrorReply(8, Status(Code::kModelError, "CUDA error"), {}, 0, true));
  REQUIRE(poisoned.ok());
  MapView m(poisoned->get());
  CHECK(m.Bool("poisoned").value_or(false));
  CHECK(StatusFromReply(m).message() == "CUDA error");
}

TEST_CASE("an empty tensor's GPU travels in its descriptor; others carry none", "[protocol]") {
  Descriptor d;
  d.dtype = "float32";
  d.shape = {0, 3};
  d.strides = {3, 1};
  d.gpu = "0000:01:00.0";
  Writer w;
  d.Pack(&w);
  auto oh = Decode(std::string(w.body()));
  REQUIRE(oh.ok());
  auto back = Descriptor::Parse(oh->get());
  REQUIRE(back.ok());
  CHECK(back->gpu == "0000:01:00.0");
  d.gpu.clear();
  Writer plain;
  d.Pack(&plain);
  auto oh2 = Decode(std::string(plain.body()));
  REQUIRE(oh2.ok());
  CHECK_FALSE(MapView(oh2->get()).Find("gpu"));
}

TEST_CASE("a deadline already past reads what has come, and times out at once without a frame", "[protocol]") {
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  FrameReader reader;
  std::vector<int> fds;
  auto past = std::chrono::steady_clock::now() - std::chrono::seconds(1);
  auto t0 = std::chrono::steady_clock::now();
  auto none = RecvFrame(sv[0], &reader, &fds, past);  // a blocking socket with nothing in it
  REQUIRE(!none.ok());
  CHECK(none.status().code() == Code::kTimeout);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
  std::string two = EncodeFrame("first") + EncodeFrame("second");
  REQUIRE(SendAll(sv[1], two.substr(0, two.size() - 2)).ok());  // the second frame cut short
  auto first = RecvFrame(sv[0], &reader, &fds, past);
  REQUIRE(first.ok());
  CHECK(*first == "first");
  auto partial = RecvFrame(sv[0], &reader, &fds, past);
  REQUIRE(!partial.ok());
  CHECK(partial.status().code() == Code::kTimeout);
  REQUIRE(SendAll(sv[1], two.substr(two.size() - 2)).ok());
  auto second = RecvFrame(sv[0], &reader, &fds, past);  // the half kept, the rest read
  REQUIRE(second.ok());
  CHECK(*second == "second");
  close(sv[0]);
  close(sv[1]);
}

namespace {
void NoteSignal(int) {}

// Raises SIGUSR1 for the process, blocked in this thread (so it lands in the waiting one),
// until `waiting` is ready or `tries` are spent; true if it became ready.
template <typename T>
bool SignalUntilReady(std::future<T>& waiting, int tries) {
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &usr1, nullptr);
  bool ready = false;
  for (int i = 0; i < tries && !ready; ++i) {
    kill(getpid(), SIGUSR1);
    ready = waiting.wait_for(std::chrono::milliseconds(10)) == std::future_status::ready;
  }
  pthread_sigmask(SIG_UNBLOCK, &usr1, nullptr);  // one still pending runs the handler here
  return ready;
}
}  // namespace

TEST_CASE("a signal ends RecvFrameUntilSignal's wait and keeps the half frame; RecvFrame waits on", "[protocol]") {
  struct sigaction sa = {}, old = {};
  sa.sa_handler = NoteSignal;  // no SA_RESTART, as Python installs its handler for SIGINT
  REQUIRE(sigaction(SIGUSR1, &sa, &old) == 0);
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
  const std::string frame = EncodeFrame("whole");
  for (bool with_deadline : {false, true}) {  // blocked in recvmsg, or in poll
    INFO("with a deadline: " << with_deadline);
    std::optional<std::chrono::steady_clock::time_point> deadline;
    if (with_deadline) deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    REQUIRE(SendAll(sv[1], frame.substr(0, 3)).ok());  // half a frame
    FrameReader reader;
    std::vector<int> fds;
    bool interrupted = false;
    auto got = std::async(std::launch::async,
                          [&] { return RecvFrameUntilSignal(sv[0], &reader, &fds, deadline, false, &interrupted); });
    CHECK(got.wait_for(std::chrono::milliseconds(200)) == std::future_status::timeout);  // waits for the rest
    bool ended = SignalUntilReady(got, 500);
    if (!ended) shutdown(sv[0], SHUT_RDWR);  // ends the wait: a failure, not a hang
    REQUIRE(ended);
    auto body = got.get();
    REQUIRE(body.ok());
    CHECK(interrupted);
    CHECK(body->empty());
    CHECK(reader.buffered() == 3);  // what was read stays for the next call
    REQUIRE(SendAll(sv[1], frame.substr(3)).ok());
    auto whole = RecvFrameUntilSignal(sv[0], &reader, &fds, deadline, false, &interrupted);
    REQUIRE(whole.ok());
    CHECK(!interrupted);
    CHECK(*whole == "whole");
  }
  // RecvFrame (shoald's worker, the C++ client) goes on waiting through signals.
  FrameReader reader;
  std::vector<int> fds;
  auto got = std::async(std::launch::async, [&] { return RecvFrame(sv[0], &reader, &fds); });
  CHECK(!SignalUntilReady(got, 20));
  REQUIRE(SendAll(sv[1], frame).ok());
  auto whole = got.get();
  REQUIRE(whole.ok());
  CHECK(*whole == "whole");
  close(sv[0]);
  close(sv[1]);
  sigaction(SIGUSR1, &old, nullptr);
}

TEST_CASE("a batch's member replies go back to back, a write per kMaxFdsPerFrame fds", "[protocol]") {
  // Fds are numbers here: JoinFrames only carries them.
  std::vector<EncodedReply> members = {{"a", {}}, {"b", {10, 11, 12, 13, 14}}, {"", {}}, {"c", {}}, {"d", {20, 21, 22, 23}}};
  auto writes = JoinFrames(members);
  REQUIRE(writes.size() == 2);  // 5 + 4 fds do not fit one write
  CHECK(writes[0].body == EncodeFrame("a") + EncodeFrame("b") + EncodeFrame("c"));
  CHECK(writes[0].fds == std::vector<int>{10, 11, 12, 13, 14});
  CHECK(writes[1].body == EncodeFrame("d"));
  CHECK(writes[1].fds == std::vector<int>{20, 21, 22, 23});
  std::vector<EncodedReply> many(40, EncodedReply{"m", {1}});
  auto w = JoinFrames(many);
  REQUIRE(w.size() == 5);
  for (const auto& x : w) CHECK(x.fds.size() == kMaxFdsPerFrame);
  CHECK(JoinFrames({}).empty());
}
