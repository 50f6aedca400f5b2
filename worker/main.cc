// shoal-worker: a worker process, the zygote that forks them, or a start-up check.
//
//   shoal-worker --fd N --slot S [--interpreters K --interpreter-cache DIR] [sandbox]
//   shoal-worker --fd N --zygote --supervisor PID [...]      the zygote (worker/zygote.h)
//   shoal-worker --check-interpreters K --interpreter-cache DIR
//
// A worker reads framed messages from shoald and lets its interpreters handle them. With
// one interpreter the reading thread runs every message itself. With K, it is a router:
// interpreter i has a thread and a queue; a job goes to the interpreter shoald chose
// ("interp"), loads and unloads go to all of them (one reply once all are done), arenas
// are mapped by all, TorchScript jobs run on the chosen thread without Python. A worker
// may crash: shoald notices (EOF + SIGCHLD), answers the jobs of all its interpreters and
// replaces it.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <torch/version.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>

#include "protocol/channel.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "worker/interpreter.h"
#include "worker/sandbox.h"
#include "worker/torchscript.h"
#include "worker/zygote.h"

namespace {

using shoal::Interpreter;
using Interpreters = std::vector<std::unique_ptr<Interpreter>>;

// The shoal package: $SHOAL_PYTHONPATH, else the build tree next to this binary
// (build/bin/../python), else wherever the interpreter finds it (an installed shoal).
std::string PythonDir() {
  std::error_code ec;
  auto beside = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().parent_path() / "python";
  if (const char* d = getenv("SHOAL_PYTHONPATH"); d != nullptr && *d != '\0') return d;
  if (std::filesystem::exists(beside / "shoal" / "_worker.py", ec)) return beside.string();
  return "";
}

// Starts `k` interpreters (private copies under `cache` when k > 1); each returns with its
// GIL released.
shoal::Result<Interpreters> StartInterpreters(int k, const std::string& cache) {
  Interpreters out;
  for (int i = 0; i < k; ++i) {
    auto it = Interpreter::Start(PythonDir(), k > 1 ? cache : "", i);
    if (!it.ok()) return it.status();
    (*it)->ReleaseGil();
    out.push_back(std::move(*it));
  }
  return out;
}

// Serialises replies of several threads onto the one socket.
class ReplySink {
 public:
  explicit ReplySink(int fd) : fd_(fd) {}
  void Send(const std::string& body) {
    if (body.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (!shoal::SendAll(fd_, shoal::EncodeFrame(body)).ok()) _exit(0);  // shoald is gone
  }

 private:
  int fd_;
  std::mutex mu_;
};

// Replies of one message handled by every interpreter: the first error, else the first
// reply, sent when the last interpreter is done.
struct Gather {
  explicit Gather(int n) : remaining(n) {}
  std::mutex mu;
  int remaining;
  std::string reply;
  bool failed = false;
  void Add(const std::string& r, ReplySink* sink) {
    std::lock_guard<std::mutex> lock(mu);
    bool error = false;
    if (auto oh = shoal::Decode(r); oh.ok()) {
      auto ok = shoal::MapView(oh->get()).Bool("ok");
      error = ok.ok() && !*ok;
    }
    if (reply.empty() || (error && !failed)) {
      reply = r;
      failed = failed || error;
    }
    if (--remaining == 0) sink->Send(reply);
  }
};

struct Task {
  std::string body;
  std::vector<int> fds;           // this interpreter's own copies of the fds it carries
  bool torchscript = false;       // a TorchScript job: no Python
  std::shared_ptr<Gather> gather;  // set when every interpreter handles it
};

// One interpreter's thread and queue.
class Lane {
 public:
  Lane(Interpreter* interp, int slot, ReplySink* sink, shoal::TorchScriptModels* ts)
      : interp_(interp), slot_(slot), sink_(sink), ts_(ts) {}
  void Start() { thread_ = std::thread([this] { Loop(); }); }
  void Push(Task t) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(t));
      ++load_;
    }
    cv_.notify_one();
  }
  int load() const { return load_.load(); }

 private:
  void Loop() {
    interp_->AttachThread();
    if (auto st = interp_->CreateRunner(slot_); !st.ok()) {
      spdlog::critical("{}", st.ToString());
      _exit(3);
    }
    for (;;) {
      Task t;
      interp_->ReleaseGil();
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        t = std::move(queue_.front());
        queue_.pop_front();
      }
      std::string reply;
      if (t.torchscript) {
        if (auto oh = shoal::Decode(t.body); oh.ok()) ts_->Handle(shoal::MapView(oh->get()), {}, &reply);
      } else {
        interp_->AcquireGil();
        auto r = interp_->Handle(t.body, &t.fds);
        if (!r.ok()) {
          spdlog::critical("{}", r.status().ToString());
          _exit(4);
        }
        reply = std::move(*r);
        shoal::CloseAll(&t.fds);  // none, unless the runner left one unclaimed
      }
      --load_;
      if (t.gather) {
        t.gather->Add(reply, sink_);
      } else {
        sink_->Send(reply);
      }
    }
  }

  Interpreter* interp_;
  int slot_;
  ReplySink* sink_;
  shoal::TorchScriptModels* ts_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  std::atomic<int> load_{0};
};

// One interpreter: the reading thread runs every message itself.
[[noreturn]] void ServeOne(int fd, Interpreter* interp) {
  shoal::FrameReader reader;
  std::vector<int> fds;
  shoal::TorchScriptModels torchscript;  // TorchScript runs here, in C++, without Python
  for (;;) {
    interp->ReleaseGil();
    auto body = shoal::RecvFrame(fd, &reader, &fds);
    interp->AcquireGil();
    if (!body.ok()) {
      if (body.status().code() != shoal::Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;  // supervisor gone or stream broken: nothing left to serve
    }
    if (auto oh = shoal::Decode(*body); oh.ok()) {
      std::string ts_reply;
      if (torchscript.Handle(shoal::MapView(oh->get()), fds, &ts_reply)) {
        if (!ts_reply.empty() && !shoal::SendAll(fd, shoal::EncodeFrame(ts_reply)).ok()) break;
        continue;
      }
    }
    auto reply = interp->Handle(*body, &fds);
    if (!reply.ok()) {
      spdlog::critical("{}", reply.status().ToString());
      _exit(4);
    }
    if (!reply->empty()) {
      if (auto st = shoal::SendAll(fd, shoal::EncodeFrame(*reply)); !st.ok()) break;
    }
  }
  fflush(stderr);
  // No Py_Finalize: tearing torch down at exit can hang and buys nothing.
  _exit(0);
}

// Several interpreters: this thread routes, one thread per interpreter runs.
[[noreturn]] void ServeMany(int fd, int slot, const Interpreters& interps) {
  ReplySink sink(fd);
  shoal::TorchScriptModels torchscript;
  std::vector<std::unique_ptr<Lane>> lanes;
  for (const auto& it : interps) lanes.push_back(std::make_unique<Lane>(it.get(), slot, &sink, &torchscript));
  for (auto& l : lanes) l->Start();
  const int k = static_cast<int>(lanes.size());
  shoal::FrameReader reader;
  std::vector<int> fds;
  for (;;) {
    auto body = shoal::RecvFrame(fd, &reader, &fds);
    if (!body.ok()) {
      if (body.status().code() != shoal::Code::kUnavailable) spdlog::error("{}", body.status().ToString());
      break;
    }
    auto oh = shoal::Decode(*body);
    if (!oh.ok()) {
      spdlog::critical("undecodable message from shoald: {}", oh.status().ToString());
      _exit(4);
    }
    shoal::MapView m(oh->get());
    std::string op = m.Str("op").value_or("");
    if (op == "infer") {
      auto interp = m.OptUint("interp");
      uint64_t i = interp.ok() && interp->has_value() ? **interp : 0;
      if (i >= static_cast<uint64_t>(k)) {
        sink.Send(shoal::ErrorReply(m.Uint("id").value_or(0),
                                    shoal::Status::Internal("worker " + std::to_string(slot) + " has no interpreter " +
                                                            std::to_string(i))));
        continue;
      }
      Task t;
      t.torchscript = torchscript.Holds(m);
      t.body = std::move(*body);
      lanes[i]->Push(std::move(t));
      continue;
    }
    // Loads, unloads, arenas: TorchScript's share first (in this thread), then every
    // interpreter's.
    std::string ts_reply;
    if (torchscript.Handle(m, fds, &ts_reply)) {
      sink.Send(ts_reply);
      continue;
    }
    if (op == "free") {  // any one interpreter can free (the allocator is in the arena)
      size_t best = 0;
      for (size_t i = 1; i < lanes.size(); ++i) {
        if (lanes[i]->load() < lanes[best]->load()) best = i;
      }
      Task t;
      t.body = std::move(*body);
      lanes[best]->Push(std::move(t));
      continue;
    }
    int carried = 0;
    if (op == "arena") carried = 1;
    if (static_cast<int>(fds.size()) < carried) {
      spdlog::critical("'{}' from shoald came without its fd", op);
      _exit(4);
    }
    auto gather = m.OptUint("id").value_or(std::nullopt) ? std::make_shared<Gather>(k) : nullptr;
    for (int i = 0; i < k; ++i) {
      Task t;
      t.body = *body;
      t.gather = gather;
      for (int c = 0; c < carried; ++c) t.fds.push_back(dup(fds[c]));
      lanes[i]->Push(std::move(t));
    }
    for (int c = 0; c < carried; ++c) close(fds[c]);
    fds.erase(fds.begin(), fds.begin() + carried);
  }
  fflush(stderr);
  _exit(0);
}

// --check-interpreters: can this torch run K interpreters in one process? Starts two,
// runs a small torch job in both at once, prints the versions. shoald runs it before
// starting workers with K > 1 and refuses to start when it fails or crashes.
int CheckInterpreters(const std::string& cache) {
  std::printf("torch %s, Python %s\n", TORCH_VERSION, SHOAL_PYTHON_VERSION);
  std::fflush(stdout);
  auto interps = StartInterpreters(2, cache);
  if (!interps.ok()) {
    std::fprintf(stderr, "%s\n", interps.status().message().c_str());
    return 1;
  }
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (auto& it : *interps) {
    threads.emplace_back([&failures, interp = it.get()] {
      interp->AttachThread();
      if (auto st = interp->SelfTest(); !st.ok()) {
        std::fprintf(stderr, "interpreter %d: %s\n", interp->index(), st.message().c_str());
        ++failures;
      }
      interp->ReleaseGil();
    });
  }
  for (auto& t : threads) t.join();
  std::printf("%s\n", (*interps)[0]->versions().c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(failures == 0 ? 0 : 1);
}

}  // namespace

int main(int argc, char** argv) {
  int fd = -1;
  int slot = 0;
  int interpreters = 1;
  int check = 0;
  std::string cache;
  bool zygote = false;
  pid_t supervisor = 0;
  shoal::SandboxConfig sandbox;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--zygote") {
      zygote = true;
      continue;
    }
    if (i + 1 >= argc) break;
    std::string v = argv[++i];
    if (a == "--fd") {
      fd = std::atoi(v.c_str());
    } else if (a == "--slot") {
      slot = std::atoi(v.c_str());
    } else if (a == "--interpreters") {
      interpreters = std::atoi(v.c_str());
    } else if (a == "--interpreter-cache") {
      cache = v;
    } else if (a == "--check-interpreters") {
      check = std::atoi(v.c_str());
    } else if (a == "--supervisor") {
      supervisor = static_cast<pid_t>(std::atoi(v.c_str()));
    } else if (!sandbox.ParseArg(a, v)) {
      fprintf(stderr, "shoal-worker: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e shoal-worker[%P] %l: %v");
  if (check > 0) return CheckInterpreters(cache);
  if (fd < 0 || interpreters < 1 || (interpreters > 1 && cache.empty())) {
    fprintf(stderr, "shoal-worker is started by shoald (usage: shoal-worker --fd N --slot S "
                    "[--interpreters K --interpreter-cache DIR])\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGKILL);

  auto interps = StartInterpreters(interpreters, cache);
  if (!interps.ok()) {
    spdlog::critical("{}", interps.status().ToString());
    _exit(3);
  }
  if (zygote) {
    auto forked = shoal::RunZygote(fd, *interps, supervisor);  // returns in workers only
    fd = forked.fd;
    slot = forked.slot;
  }
  // Everything model code could abuse is dropped before the first model is loaded.
  if (auto st = shoal::ApplySandbox(sandbox); !st.ok()) {
    spdlog::critical("worker sandbox: {}", st.ToString());
    _exit(3);
  }
  if (interpreters > 1) ServeMany(fd, slot, *interps);
  Interpreter* only = (*interps)[0].get();
  only->AcquireGil();
  if (auto st = only->CreateRunner(slot); !st.ok()) {
    spdlog::critical("{}", st.ToString());
    _exit(3);
  }
  ServeOne(fd, only);
}
