// The model registry alone, over fake model hosts and a fake job queue: loads gathered
// over workers, version resolution, crash records, unload drains.
#include <chrono>
#include <thread>

#include "protocol/model_name.h"
#include "supervisor/model_registry.h"
#include "tests/cpp/catch.h"
#include "tests/cpp/supervisor_fakes.h"

using namespace shoal;
using namespace shoal::testing;

namespace {

struct Fixture : RoleFixture {
  FakeHosts hosts;
  FakeJobs jobs;
  ModelRegistry registry{io, config, &hosts, &jobs};
  std::vector<Status> results;

  Fixture() { hosts.live = {{0, 1}, {1, 2}}; }
  ModelRegistry::Done Record() {
    return [this](const Status& st, const std::string&) { results.push_back(st); };
  }
  void LoadEverywhere(const std::string& name) {
    REQUIRE(registry.Load(name, NamedArchive("/m.pt"), Record()).ok());
    while (!hosts.loads.empty()) hosts.Answer();
  }
};

}  // namespace

TEST_CASE("a load goes to every live worker and is answered once, when all are done", "[registry]") {
  Fixture f;
  REQUIRE(f.registry.Load("m", NamedArchive("/m.pt"), f.Record()).ok());
  REQUIRE(f.hosts.loads.size() == 2);
  CHECK_FALSE(f.registry.Ready("m"));
  f.hosts.Answer();
  CHECK(f.results.empty());
  CHECK(f.registry.Ready("m"));  // one worker serves it already
  f.hosts.Answer();
  REQUIRE(f.results.size() == 1);
  CHECK(f.results[0].ok());
  CHECK(f.registry.List()[0].engine == "python");
}

TEST_CASE("a load that fails in one worker fails, is unloaded everywhere and forgotten", "[registry]") {
  Fixture f;
  REQUIRE(f.registry.Load("m", NamedArchive("/m.pt"), f.Record()).ok());
  f.hosts.Answer();
  f.hosts.Answer(Status(Code::kModelError, "model 'm': import failed"));
  REQUIRE(f.results.size() == 1);
  CHECK(f.results[0].code() == Code::kModelError);
  CHECK(f.hosts.unloaded == std::vector<std::string>{"m"});
  CHECK(f.registry.size() == 0);
  CHECK(f.registry.Resolve("m").status().code() == Code::kModelNotFound);
}

TEST_CASE("a loaded name cannot be loaded again until it is unloaded", "[registry]") {
  Fixture f;
  f.LoadEverywhere("m");
  auto st = f.registry.Load("m", NamedArchive("/other.pt"), f.Record());
  CHECK(st.code() == Code::kBadRequest);
  CHECK(st.message().find("already loaded") != std::string::npos);
}

TEST_CASE("a plain name resolves to the newest serving version", "[registry]") {
  Fixture f;
  f.LoadEverywhere("r:2");
  f.LoadEverywhere("r:10");
  CHECK(*f.registry.Resolve("r") == "r:10");  // numbers compare as numbers
  CHECK(*f.registry.Resolve("r:2") == "r:2");
  // While a newer version loads, the serving one keeps the plain name.
  REQUIRE(f.registry.Load("r:11", NamedArchive("/r11.pt"), f.Record()).ok());
  CHECK(*f.registry.Resolve("r") == "r:10");
  CHECK(f.registry.Resolve("r:3").status().code() == Code::kModelNotFound);
  CHECK(f.registry.Resolve("q").status().message().find("load it with `shoal load q ARCHIVE`") != std::string::npos);
}

TEST_CASE("which version is newest does not depend on the order versions are looked at", "[registry]") {
  // Numbers as numbers, text as text, text after numbers: one strict order. Compared pairwise
  // as before, "10" < "1a" (text) < "2" (text) < "10" (numbers) went round in a circle, and
  // the registry's walk in key order picked r:2.
  CHECK(NewerVersion("10", "2"));
  CHECK(NewerVersion("1a", "10"));
  CHECK(NewerVersion("1a", "2"));
  Fixture f;
  f.LoadEverywhere("r:2");
  f.LoadEverywhere("r:10");
  f.LoadEverywhere("r:1a");
  CHECK(*f.registry.Resolve("r") == "r:1a");
}

TEST_CASE("job crashes from two clients within the window mark a model failed", "[registry]") {
  Fixture f;
  f.config.crash_loop_limit = 2;
  f.LoadEverywhere("m");
  f.jobs.pending["m"] = 3;
  f.registry.RecordCrash({"m", 1000}, "signal SIGSEGV");
  CHECK(f.registry.Ready("m"));
  f.registry.RecordCrash({"m", 1001}, "signal SIGSEGV");
  CHECK_FALSE(f.registry.Ready("m"));
  auto resolved = f.registry.Resolve("m");
  CHECK(resolved.status().code() == Code::kUnavailable);
  CHECK(resolved.status().message().find("crashed 2 workers for 2 different clients") != std::string::npos);
  REQUIRE(f.jobs.failed.size() == 1);
  CHECK(f.jobs.failed[0].find("is marked failed") != std::string::npos);
  CHECK(f.hosts.unloaded == std::vector<std::string>{"m"});
  // A failed model may be loaded again.
  CHECK(f.registry.Load("m", NamedArchive("/fixed.pt"), f.Record()).ok());
}

TEST_CASE("a client whose jobs keep crashing workers is refused; the model serves the others", "[registry]") {
  Fixture f;
  f.config.crash_loop_limit = 3;
  f.LoadEverywhere("m");
  for (int i = 0; i < 5; ++i) f.registry.RecordCrash({"m", 1000}, "signal SIGSEGV");
  CHECK(f.registry.Ready("m"));
  CHECK(f.registry.Resolve("m").ok());
  auto refused = f.registry.Admits("m", 1000);
  CHECK(refused.code() == Code::kUnavailable);
  CHECK(refused.message().find("refuses jobs from uid 1000") != std::string::npos);
  CHECK(f.registry.Admits("m", 1001).ok());
  auto list = f.registry.List();
  REQUIRE(list[0].refused.size() == 1);
  CHECK(list[0].refused[0].first == 1000);
}

TEST_CASE("a refusal ends with the crash window", "[registry]") {
  Fixture f;
  f.config.crash_loop_limit = 1;
  f.config.crash_window_s = 0;
  f.LoadEverywhere("m");
  f.registry.RecordCrash({"m", 1000}, "signal SIGSEGV");
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(f.registry.Admits("m", 1000).ok());
}

TEST_CASE("crashes while loading mark a model failed whoever asked", "[registry]") {
  Fixture f;
  f.config.crash_loop_limit = 2;
  f.LoadEverywhere("m");
  f.registry.RecordCrash({"m", std::nullopt}, "signal SIGABRT");
  CHECK(f.registry.Ready("m"));
  f.registry.RecordCrash({"m", std::nullopt}, "signal SIGABRT");
  CHECK(f.registry.Resolve("m").status().message().find("while loading") != std::string::npos);
}

TEST_CASE("an unload waits for the model's jobs, then finishes", "[registry]") {
  Fixture f;
  f.LoadEverywhere("m");
  f.jobs.pending["m"] = 1;
  bool done = false;
  REQUIRE(f.registry.Unload("m", [&] { done = true; }).ok());
  CHECK_FALSE(done);
  CHECK(f.registry.Resolve("m").status().message().find("being unloaded") != std::string::npos);
  f.jobs.pending["m"] = 0;
  f.registry.CheckUnloads();
  CHECK(done);
  CHECK(f.registry.size() == 0);
  CHECK(f.hosts.unloaded == std::vector<std::string>{"m"});
}

TEST_CASE("an unload's grace period answers the jobs that did not start", "[registry]") {
  Fixture f;
  f.config.unload_grace_ms = 20;
  f.LoadEverywhere("m");
  f.jobs.pending["m"] = 2;
  bool done = false;
  REQUIRE(f.registry.Unload("m", [&] { done = true; }).ok());
  f.io.run_for(std::chrono::milliseconds(60));
  CHECK(done);
  REQUIRE(f.jobs.failed.size() == 1);
  CHECK(f.jobs.failed[0].find("did not start within the 20 ms grace period") != std::string::npos);
}

TEST_CASE("a plain name unloads every version; an unknown one is MODEL_NOT_FOUND", "[registry]") {
  Fixture f;
  f.LoadEverywhere("r:1");
  f.LoadEverywhere("r:2");
  int done = 0;
  REQUIRE(f.registry.Unload("r", [&] { ++done; }).ok());
  CHECK(done == 1);
  CHECK(f.registry.size() == 0);
  CHECK(f.registry.Unload("r", [] {}).code() == Code::kModelNotFound);
}

TEST_CASE("a worker that finishes loading a model unloaded meanwhile does not serve it", "[registry]") {
  Fixture f;
  f.hosts.live = {{0, 1}};
  REQUIRE(f.registry.Load("m", NamedArchive("/m.pt"), f.Record()).ok());
  bool unloaded = false;
  REQUIRE(f.registry.Unload("m", [&] { unloaded = true; }).ok());  // no jobs: at once
  CHECK(unloaded);
  f.hosts.Answer();
  CHECK(f.hosts.Serving("m") == 0);
  CHECK(f.registry.size() == 0);
}

TEST_CASE("a new worker loads every servable model, then reports it started", "[registry]") {
  Fixture f;
  f.registry.AddConfigured("a", NamedArchive("/a.pt"));
  f.registry.AddConfigured("b", NamedArchive("/b.pt"));
  std::vector<std::string> each;
  bool started = false;
  f.registry.LoadInto({5, 9}, [&](const std::string& m, const Status&, const std::string&) { each.push_back(m); },
                      [&] { started = true; });
  REQUIRE(f.hosts.loads.size() == 2);
  f.hosts.Answer();
  f.hosts.Answer(Status(Code::kModelError, "b is broken"));
  CHECK(started);
  CHECK(each == std::vector<std::string>{"a", "b"});
  CHECK(f.hosts.Serving("a") == 1);
  CHECK(f.hosts.Serving("b") == 0);
}

TEST_CASE("a model loaded for cuda:N goes only to the workers on GPU N, also to their replacements",
          "[registry][gpu]") {
  Fixture f;
  f.hosts.live = {{0, 1}, {1, 2}, {2, 3}};
  f.hosts.gpu_of = {{0, 0}, {1, 1}, {2, 0}};
  REQUIRE(f.registry.Load("m", NamedArchive("/m.pt"), f.Record(), "cuda:1").ok());
  REQUIRE(f.hosts.loads.size() == 1);
  CHECK(f.hosts.loads[0].worker.slot == 1);
  CHECK(f.hosts.devices[0] == "cuda:1");
  f.hosts.Answer();
  REQUIRE(f.results.size() == 1);
  CHECK(f.results[0].ok());
  CHECK(f.registry.Ready("m"));
  // A replacement on GPU 0 does not load it; one on GPU 1 does.
  bool done = false;
  f.registry.LoadInto({0, 4}, [](const std::string&, const Status&, const std::string&) {}, [&] { done = true; });
  CHECK(done);
  CHECK(f.hosts.loads.empty());
  f.registry.LoadInto({1, 5}, [](const std::string&, const Status&, const std::string&) {}, [] {});
  REQUIRE(f.hosts.loads.size() == 1);
  CHECK(f.hosts.loads[0].worker.slot == 1);
  // "cuda" and "auto" run everywhere.
  f.hosts.Answer();
  REQUIRE(f.registry.Load("n", NamedArchive("/n.pt"), f.Record(), "cuda").ok());
  CHECK(f.hosts.loads.size() == 3);
}

TEST_CASE("only forward and the methods a load allows may be called, and a refusal says how to allow one",
          "[registry][methods]") {
  Fixture f;
  REQUIRE(f.registry.Load("m", NamedArchive("/m.pt"), f.Record(), "auto", {}, {"make_prediction", "embed"}).ok());
  REQUIRE(f.registry.Load("plain", NamedArchive("/p.pt"), f.Record()).ok());
  CHECK(f.registry.AllowsMethod("m", "").ok());
  CHECK(f.registry.AllowsMethod("m", "forward").ok());
  CHECK(f.registry.AllowsMethod("m", "make_prediction").ok());
  CHECK(f.registry.AllowsMethod("m", "embed").ok());
  CHECK(f.registry.AllowsMethod("plain", "forward").ok());
  auto no = f.registry.AllowsMethod("plain", "make_prediction");
  CHECK(no.code() == Code::kBadRequest);
  for (const char* says : {"method 'make_prediction' is not allowed; this model allows forward.",
                           "methods=[\"make_prediction\"]", "shoal load --methods make_prediction"}) {
    CAPTURE(says);
    CHECK(no.message().find(says) != std::string::npos);
  }
  CHECK(f.registry.AllowsMethod("m", "load_state_dict").message().find(
            "this model allows forward, make_prediction, embed.") != std::string::npos);
  for (const auto& info : f.registry.List()) {
    CHECK(info.methods == (info.name == "m" ? std::vector<std::string>{"make_prediction", "embed"}
                                            : std::vector<std::string>{}));
  }
}
