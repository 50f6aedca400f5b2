// The C++ client against a real shoald (started here as a child process) with archives
// made by tests/models/make_archives.py (the ctest fixture). SHOAL_BUILD_DIR and
// SHOAL_TEST_ARCHIVES come from ctest.
#include <signal.h>
#include <sys/wait.h>
#include <torch/cuda.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <future>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "shm/gpu_memory.h"
#include "shoal/client.h"
#include "tests/cpp/catch.h"

namespace {

std::string Env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

class Daemon {
 public:
  Daemon() {
    // A fresh path each time: a shoald killed by a test leaves its socket file behind.
    static int made = 0;
    socket_ = "/tmp/shoal-client-test-" + std::to_string(getpid()) + "-" + std::to_string(made++) + ".sock";
    std::string bin = Env("SHOAL_BUILD_DIR") + "/bin/shoald";
    std::string add = "add=" + Env("SHOAL_TEST_ARCHIVES") + "/add.pt";
    pid_ = fork();
    if (pid_ == 0) {
      execl(bin.c_str(), "shoald", "--socket", socket_.c_str(), "--workers", "2", "--model", add.c_str(),
            "--log-level", "warn", nullptr);
      _exit(127);
    }
    for (int i = 0; i < 300; ++i) {
      auto c = shoal::Client::Connect(socket_, 1 << 20);
      if (c.ok()) {
        auto models = (*c)->Models();
        if (models.ok() && !models->empty() && (*models)[0].ready) return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("shoald did not come up");
  }
  ~Daemon() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st;
      waitpid(pid_, &st, 0);
    }
    unlink(socket_.c_str());
  }
  // SIGKILL, and reaped.
  void Kill() {
    kill(pid_, SIGKILL);
    int st;
    waitpid(pid_, &st, 0);
    pid_ = -1;
  }
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }

 private:
  std::string socket_;
  pid_t pid_;
};

std::string Archive(const char* name) { return Env("SHOAL_TEST_ARCHIVES") + "/" + name + ".pt"; }

// Bytes in output blocks not yet released, over all workers, as `status` says.
uint64_t OutputBytes(shoal::Client& c) {
  auto text = c.StatusText();
  REQUIRE(text.ok());
  uint64_t sum = 0;
  const std::string key = "\"output_bytes\":";
  for (size_t at = text->find(key); at != std::string::npos; at = text->find(key, at + 1)) {
    sum += std::strtoull(text->c_str() + at + key.size(), nullptr, 10);
  }
  return sum;
}

}  // namespace

TEST_CASE("C++ client: infer with ordinary and arena-backed tensors", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  auto x = torch::arange(6, torch::kFloat).reshape({2, 3});
  auto y = (*c)->Infer("add", {x});
  REQUIRE(y.ok());
  REQUIRE(y->isTensor());
  REQUIRE(torch::equal(y->toTensor(), x * 2 + 1));

  auto xa = (*c)->Empty({4, 4});
  REQUIRE(xa.ok());
  xa->fill_(2.0);
  REQUIRE(torch::equal((*c)->Infer("add", {*xa})->toTensor(), torch::full({4, 4}, 5.0)));

  REQUIRE((*c)->Load("identity", Archive("identity")).ok());
  // The client opens the archive itself (and passes the file): its own open() errors.
  auto missing = (*c)->Load("missing", Archive("no-such-archive"));
  CHECK(missing.code() == shoal::Code::kBadRequest);
  CHECK(missing.message().find("cannot read archive " + Archive("no-such-archive") + ": No such file") == 0);
  auto same = (*c)->Infer("identity", {*xa});
  REQUIRE(same->toTensor().data_ptr() == xa->data_ptr());  // zero copies
  // A lazy view of an arena tensor is its values, not its bytes: it travels as a copy.
  auto za = (*c)->Empty({2, 3}, at::kComplexFloat);
  REQUIRE(za.ok());
  za->copy_(torch::complex(torch::arange(6, torch::kFloat).reshape({2, 3}), torch::ones({2, 3})));
  auto conj = (*c)->Infer("identity", {za->conj()});
  REQUIRE(conj.ok());
  CHECK(torch::equal(conj->toTensor().resolve_conj(), za->conj().resolve_conj()));
  auto neg = (*c)->Infer("identity", {torch::_neg_view(*xa)});
  REQUIRE(neg.ok());
  CHECK(torch::equal(neg->toTensor().resolve_neg(), -*xa));
  auto models = (*c)->Models();
  REQUIRE(models->size() == 2);
}

TEST_CASE("C++ client: a load's batching options reach shoald, and bad ones are refused", "[client][batching]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  shoal::Client::LoadOptions options;
  options.max_batch = 4;
  options.max_delay_us = 1500;
  options.preferred_batch_sizes = std::vector<uint32_t>{2, 4};
  REQUIRE((*c)->Load("batched", Archive("identity"), options).ok());
  auto text = (*c)->StatusText();
  REQUIRE(text.ok());
  CHECK(text->find("\"max_batch\":4") != std::string::npos);
  CHECK(text->find("\"max_delay_us\":1500") != std::string::npos);
  options.max_batch = 100;
  auto refused = (*c)->Load("too_big", Archive("identity"), options);
  CHECK(refused.code() == shoal::Code::kBadRequest);
  CHECK(refused.message() == "model 'too_big': max_batch 100 is more than 64 jobs per batch");
}

TEST_CASE("C++ client: structured outputs become IValues", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE((*c)->Load("branchy", Archive("branchy")).ok());
  auto y = (*c)->Infer("branchy", {torch::randn({3, 16})});
  REQUIRE(y.ok());
  REQUIRE(y->isGenericDict());
  auto dict = y->toGenericDict();
  REQUIRE(dict.at("logits").toTensor().sizes() == std::vector<int64_t>{3, 4});
  auto extra = dict.at("extra").toTuple();
  REQUIRE(extra->elements()[0].isTensor());
  auto list = extra->elements()[1].toList();
  REQUIRE(list.get(0).isInt());
  REQUIRE(list.get(1).isString());
}

TEST_CASE("C++ client: errors carry their codes", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE((*c)->Infer("ghost", {torch::ones({1})}).status().code() == shoal::Code::kModelNotFound);
  REQUIRE((*c)->Load("raises", Archive("raises")).ok());
  auto e = (*c)->Infer("raises", {torch::ones({2})});
  REQUIRE(e.status().code() == shoal::Code::kModelError);
  REQUIRE(e.status().message().find("ValueError") != std::string::npos);  // the traceback
  REQUIRE((*c)->Load("crashy", Archive("crashy")).ok());
  auto health = (*c)->Health();
  REQUIRE(health.ok());
  REQUIRE(health->live);
  REQUIRE(health->models.at("crashy"));
  auto crash = (*c)->Infer("crashy", {-torch::ones({2})});
  REQUIRE(crash.status().code() == shoal::Code::kWorkerCrashed);
  REQUIRE(crash.status().message().find("SIGSEGV") != std::string::npos);
  // the service goes on
  REQUIRE((*c)->Infer("add", {torch::zeros({1})}).ok());
  REQUIRE((*c)->Unload("raises").ok());
  REQUIRE((*c)->Unload("raises").code() == shoal::Code::kModelNotFound);
}

TEST_CASE("C++ client: no daemon gives a clear Unavailable", "[client]") {
  auto c = shoal::Client::Connect("/tmp/shoal-no-such-daemon.sock");
  REQUIRE(c.status().code() == shoal::Code::kUnavailable);
  REQUIRE(c.status().message().find("is shoald running?") != std::string::npos);
}

TEST_CASE("C++ client: Infer returns TIMEOUT by itself when shoald does not answer, and goes on after", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Infer("add", {torch::zeros({1})}).ok());
  kill(d.pid(), SIGSTOP);  // shoald answers nothing, not even at the job's deadline
  auto start = std::chrono::steady_clock::now();
  auto late = (*c)->Infer("add", {torch::zeros({1})}, std::chrono::milliseconds(200));
  auto waited = std::chrono::steady_clock::now() - start;
  kill(d.pid(), SIGCONT);
  REQUIRE(late.status().code() == shoal::Code::kTimeout);
  CHECK(late.status().message().find("did not answer") != std::string::npos);
  CHECK(waited >= std::chrono::milliseconds(2200));  // the deadline plus the margin
  CHECK(waited < std::chrono::seconds(10));
  // The same client works on; the answer to the request it gave up on is skipped.
  auto y = (*c)->Infer("add", {torch::ones({3})}, std::chrono::seconds(30));
  REQUIRE(y.ok());
  CHECK(torch::equal(y->toTensor(), torch::full({3}, 3.0)));
}

TEST_CASE("C++ client: results live in the worker's output arenas and are released when dropped", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket(), 1 << 20);
  REQUIRE(c.ok());
  // 200 results of 1 MiB through a 1 MiB input arena: only works if outputs live elsewhere
  // and their blocks go back to the worker.
  auto x = torch::ones({256 * 1024});
  for (int i = 0; i < 200; ++i) {
    auto y = (*c)->Infer("add", {x});
    REQUIRE(y.ok());
    REQUIRE(y->toTensor()[0].item<float>() == 3.0f);
  }
}

TEST_CASE("C++ client: zero-size outputs round-trip and free nothing", "[client]") {
  // A detector with no detections returns empty tensors: they own no block.
  Daemon d;
  auto c = shoal::Client::Connect(d.socket(), 1 << 20);
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("identity", Archive("identity")).ok());
  auto keep = (*c)->Empty({8});
  REQUIRE(keep.ok());
  keep->fill_(5.0);
  for (int i = 0; i < 3; ++i) {
    auto y = (*c)->Infer("identity", {torch::ones({0, 4})});
    REQUIRE(y.ok());
    REQUIRE(y->toTensor().sizes() == torch::IntArrayRef({0, 4}));
  }
  auto both = (*c)->Infer("identity", {*keep, torch::ones({0})});
  REQUIRE(both.ok());
  REQUIRE(both->isTuple());
  REQUIRE(both->toTupleRef().elements()[1].toTensor().numel() == 0);
  REQUIRE(torch::equal(*keep, torch::full({8}, 5.0)));
  auto again = (*c)->Empty({8});
  REQUIRE(again.ok());
  again->fill_(1.0);
  REQUIRE(torch::equal(*keep, torch::full({8}, 5.0)));  // no block was freed under it
}

TEST_CASE("C++ client: a dropped result goes back to its worker without another request", "[client]") {
  Daemon d;
  auto quiet = shoal::Client::Connect(d.socket(), 1 << 20);
  auto watcher = shoal::Client::Connect(d.socket(), 1 << 20);
  REQUIRE((quiet.ok() && watcher.ok()));
  {
    auto y = (*quiet)->Infer("add", {torch::ones({1 << 16})});  // 256 KiB in a worker's output arena
    REQUIRE(y.ok());
    REQUIRE(OutputBytes(**watcher) >= (1u << 18));
  }  // dropped, and `quiet` sends nothing more
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (OutputBytes(**watcher) != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(OutputBytes(**watcher) == 0);
  auto again = (*quiet)->Infer("add", {torch::zeros({4})});  // still usable
  REQUIRE(again.ok());
  CHECK(torch::equal(again->toTensor(), torch::ones({4})));
}

using Future = std::future<shoal::Result<c10::IValue>>;

bool Ready(Future& f, std::chrono::seconds within = std::chrono::seconds(60)) {
  return f.wait_for(within) == std::future_status::ready;
}

TEST_CASE("C++ client: 32 jobs in flight on one connection each get their own result", "[client][async]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket(), 1 << 20);
  REQUIRE(c.ok());
  constexpr int kJobs = 32;
  constexpr int64_t kFloats = 64 * 1024;  // 256 KiB outputs
  std::vector<Future> jobs;
  for (int k = 0; k < kJobs; ++k) {
    torch::Tensor x;
    if (k % 2) {  // arena-backed and ordinary inputs, each its own value
      auto e = (*c)->Empty({kFloats});
      REQUIRE(e.ok());
      x = *e;
    } else {
      x = torch::empty({kFloats});
    }
    x.fill_(static_cast<float>(k));
    jobs.push_back((*c)->InferAsync("add", {x}, std::chrono::seconds(60)));
  }  // the inputs are dropped here: the jobs keep their blocks
  std::vector<torch::Tensor> ys;
  std::set<void*> blocks;
  for (int k = 0; k < kJobs; ++k) {
    REQUIRE(Ready(jobs[k]));
    auto y = jobs[k].get();
    REQUIRE(y.ok());
    CHECK(torch::equal(y->toTensor(), torch::full({kFloats}, 2.0f * k + 1)));
    blocks.insert(y->toTensor().data_ptr());
    ys.push_back(y->toTensor());
  }
  CHECK(blocks.size() == kJobs);  // each result owns its own block
  CHECK(OutputBytes(**c) >= kJobs * kFloats * 4);
  ys.clear();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (OutputBytes(**c) != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(OutputBytes(**c) == 0);
}

TEST_CASE("C++ client: a slow job submitted first does not hold back a fast one", "[client][async]") {
  Daemon d;  // two workers
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("sleeps", Archive("sleeps")).ok());
  auto slow = (*c)->InferAsync("sleeps", {torch::full({4}, 8.0f)}, std::chrono::seconds(60));  // one worker sleeps 8 s
  auto fast = (*c)->InferAsync("add", {torch::ones({4})}, std::chrono::seconds(60));
  REQUIRE(Ready(fast));
  CHECK(slow.wait_for(std::chrono::seconds(0)) != std::future_status::ready);
  auto y = fast.get();
  REQUIRE(y.ok());
  CHECK(torch::equal(y->toTensor(), torch::full({4}, 3.0f)));
  REQUIRE(Ready(slow));
  auto s = slow.get();
  REQUIRE(s.ok());
  CHECK(torch::equal(s->toTensor(), torch::full({4}, 8.0f)));
}

TEST_CASE("C++ client: threads sharing a client are not held back by a slow Infer", "[client][async]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("sleeps", Archive("sleeps")).ok());
  std::mutex mu;
  std::vector<std::string> events;
  int wrong = 0;
  std::thread slow([&] {
    auto y = (*c)->Infer("sleeps", {torch::full({4}, 8.0f)}, std::chrono::seconds(60));
    std::lock_guard<std::mutex> lock(mu);
    wrong += !y.ok();
    events.push_back("slow");
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // (the outcome does not depend on it)
  std::vector<std::thread> fast;
  for (int t = 0; t < 4; ++t) {
    fast.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        float v = static_cast<float>(t * 100 + i);
        auto y = (*c)->Infer("add", {torch::full({64}, v)}, std::chrono::seconds(60));
        std::lock_guard<std::mutex> lock(mu);
        wrong += !(y.ok() && torch::equal(y->toTensor(), torch::full({64}, 2 * v + 1)));
      }
      std::lock_guard<std::mutex> lock(mu);
      events.push_back("fast");
    });
  }
  for (auto& t : fast) t.join();
  slow.join();
  CHECK(wrong == 0);
  CHECK(events == std::vector<std::string>{"fast", "fast", "fast", "fast", "slow"});
}

TEST_CASE("C++ client: a model error fails only its own future", "[client][async]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("raises", Archive("raises")).ok());
  std::vector<Future> jobs;
  for (int k = 0; k < 32; ++k) {
    jobs.push_back((*c)->InferAsync(k % 3 == 0 ? "raises" : "add", {torch::full({8}, static_cast<float>(k))}));
  }
  for (int k = 0; k < 32; ++k) {
    REQUIRE(Ready(jobs[k]));
    auto y = jobs[k].get();
    if (k % 3 == 0) {
      REQUIRE(y.status().code() == shoal::Code::kModelError);
      CHECK(y.status().message().find("ValueError") != std::string::npos);
      CHECK(y.status().message().find("model 'raises'") != std::string::npos);
    } else {
      REQUIRE(y.ok());
      CHECK(torch::equal(y->toTensor(), torch::full({8}, 2.0f * k + 1)));
    }
  }
  // An input that cannot be sent fails its future at once.
  auto bad = (*c)->InferAsync("add", {torch::Tensor()});
  REQUIRE(Ready(bad, std::chrono::seconds(0)));
  CHECK(bad.get().status().code() == shoal::Code::kBadRequest);
}

TEST_CASE("C++ client: killing shoald fails every pending future with a clear error", "[client][async]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("sleeps", Archive("sleeps")).ok());
  std::vector<Future> jobs;
  for (int k = 0; k < 8; ++k) jobs.push_back((*c)->InferAsync("sleeps", {torch::full({4}, 30.0f)}));
  REQUIRE((*c)->Models().ok());  // answered after shoald read the jobs: 2 run, 6 wait
  d.Kill();
  for (auto& j : jobs) {
    REQUIRE(Ready(j));
    auto y = j.get();
    REQUIRE(y.status().code() == shoal::Code::kUnavailable);
    CHECK(y.status().message().find("lost the connection to shoald at " + d.socket() +
                                    " before it answered infer request") == 0);
    CHECK(y.status().message().find("(model 'sleeps')") != std::string::npos);
    CHECK(y.status().message().find("resubmit") != std::string::npos);
  }
  auto after = (*c)->InferAsync("sleeps", {torch::ones({1})});
  REQUIRE(Ready(after, std::chrono::seconds(0)));
  CHECK(after.get().status().code() == shoal::Code::kUnavailable);
  CHECK((*c)->Infer("sleeps", {torch::ones({1})}).status().code() == shoal::Code::kUnavailable);
}

TEST_CASE("C++ client: destroying the client fails the futures still in flight", "[client][async]") {
  Daemon d;
  std::vector<Future> jobs;
  {
    auto c = shoal::Client::Connect(d.socket());
    REQUIRE(c.ok());
    REQUIRE((*c)->Load("sleeps", Archive("sleeps")).ok());
    for (int k = 0; k < 4; ++k) jobs.push_back((*c)->InferAsync("sleeps", {torch::full({4}, 2.0f)}));
  }
  for (auto& j : jobs) {
    REQUIRE(Ready(j, std::chrono::seconds(0)));
    auto y = j.get();
    REQUIRE(y.status().code() == shoal::Code::kUnavailable);
    CHECK(y.status().message().find("the client was closed before shoald answered infer request") == 0);
  }
}

TEST_CASE("C++ client: deadlines hold with jobs in flight while shoald is stopped", "[client][async]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Infer("add", {torch::zeros({1})}).ok());
  kill(d.pid(), SIGSTOP);
  auto early = (*c)->InferAsync("add", {torch::full({4}, 6.0f)});  // no deadline: the reader blocks for it
  std::this_thread::sleep_for(std::chrono::milliseconds(200));    // (the outcome does not depend on it)
  auto timed = (*c)->InferAsync("add", {torch::ones({4})}, std::chrono::milliseconds(300));
  auto start = std::chrono::steady_clock::now();
  auto late = (*c)->Infer("add", {torch::zeros({1})}, std::chrono::milliseconds(200));
  bool timed_ready = Ready(timed, std::chrono::seconds(30));
  auto waited = std::chrono::steady_clock::now() - start;
  bool early_ready = early.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
  kill(d.pid(), SIGCONT);
  REQUIRE(late.status().code() == shoal::Code::kTimeout);
  CHECK(late.status().message().find("did not answer infer request") != std::string::npos);
  REQUIRE(timed_ready);
  auto t = timed.get();
  REQUIRE(t.status().code() == shoal::Code::kTimeout);
  CHECK(t.status().message().find("did not answer infer request") != std::string::npos);
  CHECK(waited < std::chrono::seconds(30));
  CHECK_FALSE(early_ready);
  // The late answers are dropped (their outputs released); the job without a deadline gets its own.
  REQUIRE(Ready(early));
  auto e = early.get();
  REQUIRE(e.ok());
  CHECK(torch::equal(e->toTensor(), torch::full({4}, 13.0f)));
  e = shoal::Status::Ok();
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (OutputBytes(**c) != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  CHECK(OutputBytes(**c) == 0);
}

TEST_CASE("C++ client: CUDA tensors in and out through GPU arenas", "[client][gpu]") {
  if (!torch::cuda::is_available() || !shoal::GpuDriverReady().ok()) {
    WARN("skipped: needs a GPU (" + shoal::GpuDriverReady().message() + ")");
    return;
  }
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  REQUIRE((*c)->Load("identity", Archive("identity")).ok());
  auto xa = (*c)->Empty({4, 4}, torch::kFloat, torch::kCUDA);  // in a GPU arena
  REQUIRE(xa.ok());
  REQUIRE(xa->is_cuda());
  xa->fill_(3);
  // An empty CUDA output has no arena: it still comes back on its GPU.
  REQUIRE((*c)->Load("lift", Archive("lift")).ok());
  auto empty = (*c)->Infer("lift", {torch::empty({0, 3})});
  REQUIRE(empty.ok());
  CHECK(empty->toTensor().is_cuda());
  CHECK(empty->toTensor().sizes() == torch::IntArrayRef({0, 3}));
  auto same = (*c)->Infer("identity", {*xa});
  REQUIRE(same.ok());
  REQUIRE(same->toTensor().is_cuda());
  CHECK(same->toTensor().data_ptr() == xa->data_ptr());  // returned in place: zero copies
  // An ordinary CUDA tensor (one copy on the GPU) to a model that computes a new tensor.
  auto x = torch::arange(6, torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA)).reshape({2, 3});
  auto y = (*c)->Infer("add", {x});
  REQUIRE(y.ok());
  REQUIRE(y->toTensor().is_cuda());
  CHECK(torch::equal(y->toTensor(), x * 2 + 1));
  auto host = (*c)->Infer("add", {x}, std::nullopt, 0, /*host_outputs=*/true);
  REQUIRE(host.ok());
  CHECK(host->toTensor().is_cpu());
  CHECK(torch::equal(host->toTensor(), (x * 2 + 1).cpu()));
}

TEST_CASE("C++ client: IValue arguments and keywords reach the model, from both engines", "[client]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  for (std::string suffix : {"", "_ts"}) {
    INFO("archives" << suffix);
    REQUIRE((*c)->Load("kwenc" + suffix, Archive(("kwenc" + suffix).c_str())).ok());
    REQUIRE((*c)->Load("images" + suffix, Archive(("images" + suffix).c_str())).ok());
    REQUIRE((*c)->Load("dicts" + suffix, Archive(("dicts" + suffix).c_str())).ok());

    // Hugging Face style: keywords only.
    auto ids = torch::arange(6).reshape({2, 3});
    auto mask = torch::tensor({1, 1, 0, 1, 0, 0}).reshape({2, 3});
    auto enc = (*c)->Infer("kwenc" + suffix, {}, {{"input_ids", ids}, {"attention_mask", mask}, {"scale", 2.0}});
    REQUIRE(enc.ok());
    auto pooled = enc->toGenericDict().at("pooled").toTensor();
    CHECK(torch::equal(pooled, (ids * mask * 2).to(torch::kFloat).sum(-1)));

    // torchvision detector style: one List[Tensor] argument, through InferAsync.
    c10::List<torch::Tensor> images({torch::rand({3, 4, 4}), torch::rand({3, 2, 5})});
    auto det = (*c)->InferAsync("images" + suffix, {images}, {}).get();
    REQUIRE(det.ok());
    auto found = det->toList();
    REQUIRE(found.size() == 2);
    CHECK(torch::equal(found.get(1).toGenericDict().at("scores").toTensor(), images.get(1).mean().reshape({1})));

    // A dict of tensors, int, double, bool, str and None.
    c10::Dict<std::string, torch::Tensor> feats;
    feats.insert("a", torch::ones({3}));
    feats.insert("b", torch::arange(3, torch::kFloat));
    auto out = (*c)->Infer("dicts" + suffix, {feats, int64_t{3}, 0.5, true, std::string("fast"), c10::IValue()}, {});
    REQUIRE(out.ok());
    auto items = out->toTupleRef().elements();
    CHECK(torch::equal(items[0].toTensor(), -(torch::ones({3}) * 0.5 + torch::arange(3, torch::kFloat) * 3)));
    CHECK(items[1].toInt() == 4);
    CHECK(items[4].toStringRef() == "fast!");
    CHECK(items[5].toBool());
  }
  // What cannot travel is refused before anything is sent.
  auto bad = (*c)->Infer("kwenc", {c10::IValue(c10::Device(torch::kCPU))}, {});
  CHECK(bad.status().code() == shoal::Code::kBadRequest);
  CHECK(bad.status().message().find("args[0]") != std::string::npos);
  auto badname = (*c)->Infer("kwenc", {}, {{"input-ids", torch::ones({1})}});
  CHECK(badname.status().code() == shoal::Code::kBadRequest);
}

TEST_CASE("C++ client: a load names the entry pickle and the methods clients may call", "[client][methods]") {
  Daemon d;
  auto c = shoal::Client::Connect(d.socket());
  REQUIRE(c.ok());
  // Without its entry, a package with no model/model.pkl says which pickle to name.
  auto plain = (*c)->Load("p", Archive("predictor"));
  CHECK(plain.code() == shoal::Code::kBadRequest);
  CHECK(plain.message().find("its pickles are predictor/predictor.pkl") != std::string::npos);
  shoal::Client::LoadOptions options;
  options.entry = "predictor/predictor.pkl";
  options.methods = {"make_prediction"};
  REQUIRE((*c)->Load("p", Archive("predictor"), options).ok());
  options.entry.clear();
  REQUIRE((*c)->Load("p_ts", Archive("predictor_ts"), options).ok());
  auto models = (*c)->Models();
  REQUIRE(models.ok());
  for (const auto& m : *models) {
    INFO(m.name);
    if (m.name != "p" && m.name != "p_ts") continue;  // the daemon's own model
    CHECK(m.entry == (m.name == "p" ? "predictor/predictor.pkl" : ""));
    CHECK(m.methods == std::vector<std::string>{"make_prediction"});
  }
  for (std::string name : {"p", "p_ts"}) {
    INFO(name);
    auto a = torch::rand({3});
    auto b = torch::rand({3});
    c10::impl::GenericList pairs(c10::TupleType::create({c10::TensorType::get(), c10::TensorType::get()}));
    pairs.push_back(c10::ivalue::Tuple::create({a, b}));
    shoal::InferOptions call;
    call.method = "make_prediction";
    auto out = (*c)->Infer(name, {pairs}, {}, call);
    REQUIRE(out.ok());
    auto first = out->toList().get(0).toTupleRef().elements();
    CHECK(torch::equal(first[0].toTensor(), -a));
    CHECK(torch::equal(first[1].toTensor(), b * 2));
    call.method = "make_batch";
    auto refused = (*c)->Infer(name, {pairs, int64_t{1}}, {}, call);
    CHECK(refused.status().code() == shoal::Code::kBadRequest);
    CHECK(refused.status().message().find("this model allows forward, make_prediction.") != std::string::npos);
  }
}
