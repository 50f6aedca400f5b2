// The client front alone, on a real socket: operations decoded, bad requests answered
// with a message and the connection kept, arenas registered, infers validated against
// the client's own arenas. The roles behind it are real but no worker is started.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "shm/memfd.h"
#include "supervisor/client_front.h"
#include "tests/cpp/catch.h"
#include "tests/cpp/supervisor_fakes.h"

using namespace shoal;
using namespace shoal::testing;

namespace {

struct Front : RoleFixture, PoolListener {
  ArenaTable arenas;
  WorkerPool pool{io, config, &arenas, this};
  Metrics metrics;
  Scheduler scheduler{io, config, &pool, &arenas, &metrics};
  ModelRegistry registry{io, config, &pool, &scheduler};
  ModelRepository repository{io, config, &registry};
  ClientFront front{io, config, &registry, &repository, &scheduler, &arenas, &pool, &metrics};
  int sock = -1;
  FrameReader reader;

  void OnWorkerSpawned(ModelHosts::Worker) override {}
  void OnWorkerDied(const std::vector<CrashCharge>&, const std::string&) override {}
  void OnSlotsChanged() override {}

  Front() {
    config.socket_path = (std::filesystem::temp_directory_path() / ("front-test-" + std::to_string(getpid()))).string();
    REQUIRE(front.Listen().ok());
    sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", config.socket_path.c_str());
    REQUIRE(connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~Front() {
    close(sock);
    front.StopAccepting();
  }
  // Sends one request and runs the loop until its answer is there.
  MapView Ask(const std::function<void(Writer*)>& build, std::vector<int> fds = {}) {
    Writer w;
    build(&w);
    REQUIRE(SendAll(sock, EncodeFrame(w.body()), fds).ok());
    std::string body;
    std::thread reader_thread([&] {
      std::vector<int> got;
      auto b = RecvFrame(sock, &reader, &got);
      if (b.ok()) body = *b;
    });
    while (body.empty()) io.run_for(std::chrono::milliseconds(5));
    reader_thread.join();
    handle = *Decode(body);
    return MapView(handle.get());
  }
  static std::string ErrorCode(const MapView& m) { return *MapView(*m.Find("error")).Str("code"); }
  static std::string ErrorMessage(const MapView& m) { return *MapView(*m.Find("error")).Str("message"); }
  msgpack::object_handle handle;
};

}  // namespace

TEST_CASE("front answers ping and refuses unknown operations and versions, keeping the connection", "[front]") {
  Front f;
  CHECK(*f.Ask([](Writer* w) { BeginRequest(w, "ping", 1, 0); }).Bool("ok"));
  auto unknown = f.Ask([](Writer* w) { BeginRequest(w, "fly", 2, 0); });
  CHECK(Front::ErrorCode(unknown) == "BAD_REQUEST");
  CHECK(Front::ErrorMessage(unknown) == "unknown operation 'fly'");
  auto old = f.Ask([](Writer* w) {
    w->Map(3);
    w->Key("v"); w->Val(99);
    w->Key("op"); w->Str("ping");
    w->Key("id"); w->Val(3);
  });
  CHECK(Front::ErrorMessage(old).find("unsupported protocol version") != std::string::npos);
  CHECK(*f.Ask([](Writer* w) { BeginRequest(w, "ping", 4, 0); }).Uint("id") == 4);
}

TEST_CASE("front registers a sealed memfd arena and refuses a request without one", "[front]") {
  Front f;
  auto none = f.Ask([](Writer* w) { BeginRequest(w, "register_arena", 1, 0); });
  CHECK(Front::ErrorMessage(none).find("needs a memfd attached") != std::string::npos);
  auto fd = CreateArenaFd("front-test", 4096);
  REQUIRE(fd.ok());
  auto ok = f.Ask([](Writer* w) { BeginRequest(w, "register_arena", 2, 0); }, {*fd});
  close(*fd);
  CHECK(*ok.Uint("arena") >= 1);
  CHECK(f.arenas.size() == 1);
}

TEST_CASE("front refuses an infer for a model nobody loaded, naming what is loaded", "[front]") {
  Front f;
  auto r = f.Ask([](Writer* w) {
    BeginRequest(w, "infer", 1, 2);
    w->Key("model"); w->Str("nope");
    w->Key("inputs"); w->pk().pack_array(0);
  });
  CHECK(Front::ErrorCode(r) == "MODEL_NOT_FOUND");
  CHECK(Front::ErrorMessage(r).find("model 'nope' is not loaded (loaded: (none))") != std::string::npos);
}

TEST_CASE("front refuses descriptors outside the client's own arenas", "[front]") {
  Front f;
  f.registry.AddConfigured("m", NamedArchive("/m.pt"));
  auto fd = CreateArenaFd("front-test", 4096);
  REQUIRE(fd.ok());
  uint64_t arena = *f.Ask([](Writer* w) { BeginRequest(w, "register_arena", 1, 0); }, {*fd}).Uint("arena");
  close(*fd);
  auto infer = [&](uint64_t id, uint64_t a, int64_t n) {
    return f.Ask([&](Writer* w) {
      BeginRequest(w, "infer", id, 2);
      w->Key("model"); w->Str("m");
      w->Key("inputs");
      w->pk().pack_array(1);
      Descriptor d;
      d.arena = a;
      d.dtype = "float32";
      d.shape = {n};
      d.strides = {1};
      d.Pack(w);
    });
  };
  auto foreign = infer(2, arena + 1, 4);
  CHECK(Front::ErrorMessage(foreign).find("is not registered on this connection") != std::string::npos);
  auto past_end = infer(3, arena, 2000);
  CHECK(Front::ErrorCode(past_end) == "BAD_REQUEST");
  CHECK(Front::ErrorMessage(past_end).rfind("input 0: ", 0) == 0);
}

TEST_CASE("front loads only from a file the client passed, validated, and never opens a path", "[front]") {
  Front f;  // the test runs as shoald's own user: an admin
  auto load = [&](uint64_t id, const std::string& name, const std::string& path, std::vector<int> fds = {}) {
    return f.Ask(
        [&](Writer* w) {
          BeginRequest(w, "load", id, 2);
          w->Key("name"); w->Str(name);
          w->Key("path"); w->Str(path);
        },
        fds);
  };
  auto bad_name = load(1, "a/b", "/x.pt");
  CHECK(Front::ErrorMessage(bad_name).find("model name 'a/b' is invalid") != std::string::npos);
  // A path alone names nothing shoald will open, however readable it is to shoald.
  auto path_only = load(2, "m", "/etc/passwd");
  CHECK(Front::ErrorCode(path_only) == "BAD_REQUEST");
  CHECK(Front::ErrorMessage(path_only).find("needs the archive passed as an open file") != std::string::npos);
  CHECK(Front::ErrorMessage(path_only).find("passwd") == std::string::npos);

  auto dir = std::filesystem::temp_directory_path() / ("front-load-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::string junk = (dir / "junk.pt").string();
  int w = open(junk.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  REQUIRE(w >= 0);
  REQUIRE(write(w, "not a zip", 9) == 9);
  auto writable = load(3, "m", "/shown/name.pt", {w});
  CHECK(Front::ErrorMessage(writable).find("model 'm': archive /shown/name.pt: the file passed is open for writing") !=
        std::string::npos);
  int r = open(junk.c_str(), O_RDONLY | O_CLOEXEC);
  auto not_zip = load(4, "m", "/shown/name.pt", {r});
  CHECK(Front::ErrorMessage(not_zip).find("archive /shown/name.pt: not a zip file") != std::string::npos);
  int d = open(dir.c_str(), O_RDONLY | O_CLOEXEC);
  auto folder = load(5, "m", "/shown", {d});
  CHECK(Front::ErrorMessage(folder).find("not a regular file") != std::string::npos);
  close(w);
  close(r);
  close(d);
  std::filesystem::remove_all(dir);
  CHECK(f.registry.size() == 0);
  // Every refused load's descriptor was taken and closed: the next fd-carrying message
  // gets its own.
  auto arena = CreateArenaFd("front-test", 4096);
  REQUIRE(arena.ok());
  CHECK(*f.Ask([](Writer* w) { BeginRequest(w, "register_arena", 6, 0); }, {*arena}).Bool("ok"));
  close(*arena);
}

TEST_CASE("a session adopted for the HTTP front is never an admin, though it runs as shoald's user", "[front]") {
  Front f;
  int sv[2];
  REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  f.front.Adopt(sv[0]);  // the front serves the other end, as HttpFront does for shoal-http
  std::swap(f.sock, sv[1]);
  close(sv[1]);  // the connection Front made: this test speaks on the adopted one
  auto unload = f.Ask([](Writer* w) {
    BeginRequest(w, "unload", 1, 1);
    w->Key("name"); w->Str("m");
  });
  CHECK(Front::ErrorCode(unload) == "BAD_REQUEST");
  CHECK(Front::ErrorMessage(unload).find("the HTTP front's (shoal-http), which may not unload models") !=
        std::string::npos);
  auto load = f.Ask([](Writer* w) {
    BeginRequest(w, "load", 2, 2);
    w->Key("name"); w->Str("m");
    w->Key("path"); w->Str("/x.pt");
  });
  CHECK(Front::ErrorMessage(load).find("may not load models") != std::string::npos);
  // Everything an ordinary client may do still works on it.
  CHECK(*f.Ask([](Writer* w) { BeginRequest(w, "ping", 3, 0); }).Bool("ok"));
}
