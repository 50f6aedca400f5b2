// bench_ts_threads: the paper's baseline (issue 15) and the floor for shoal serving a
// TorchScript model: one TorchScript file loaded through libtorch in this process and run
// by THREADS C++ threads at once, no Python and no IPC anywhere. Driven by bench/paper.py.
//   usage: bench_ts_threads FILE THREADS SECONDS INTRA_OP_THREADS DEVICE DTYPE DIM...
//     DEVICE: cpu | cuda; DTYPE: float32 (standard normal values) | int64 (values in [0, 1000))
//   prints one line: CALLS_PER_S P50_MS P99_MS
// Each thread makes kWarmupCalls calls first (the profiling executor specialises the graph
// on its first runs); then all threads run together for SECONDS, and only calls that end
// inside that window count, the same rule as bench/gpu.py's drive(). With
// SHOAL_BENCH_START_LINE=1 in the environment, the window waits for the caller too: once
// warm, the process prints "ready" and starts when a line comes on its stdin (bench/paper.py
// starts several processes' windows together so).
// Runs in the forward of shoal's TorchScript runner: c10::InferenceMode, the module shared
// by every thread (Module::forward is reentrant).
#include <ATen/Parallel.h>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kWarmupCalls = 3;

// Releases every thread at once when the last one has warmed up; the window starts then.
class StartLine {
 public:
  explicit StartLine(int threads) : waiting_(threads) {}

  Clock::time_point Arrive() {
    std::unique_lock<std::mutex> lock(mu_);
    if (--waiting_ == 0) {
      const char* caller = std::getenv("SHOAL_BENCH_START_LINE");
      if (caller != nullptr && std::string(caller) == "1") {
        std::printf("ready\n");
        std::fflush(stdout);
        char line[16];
        if (std::fgets(line, sizeof(line), stdin) == nullptr) std::exit(3);  // the caller is gone
      }
      start_ = Clock::now();
      open_ = true;
      cv_.notify_all();
    }
    cv_.wait(lock, [this] { return open_; });
    return start_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int waiting_;
  bool open_ = false;
  Clock::time_point start_;
};

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  return sorted[std::min(sorted.size() - 1, static_cast<size_t>(sorted.size() * q))];
}

// libtorch's message without its C++ backtrace.
std::string Message(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr,
                 "usage: bench_ts_threads FILE THREADS SECONDS INTRA_OP_THREADS cpu|cuda float32|int64 DIM...\n");
    return 2;
  }
  const std::string file = argv[1];
  const int threads = std::atoi(argv[2]);
  const double seconds = std::atof(argv[3]);
  const int intra_op = std::atoi(argv[4]);
  const std::string device_name = argv[5];
  const std::string dtype = argv[6];
  std::vector<int64_t> shape;
  for (int i = 7; i < argc; ++i) shape.push_back(std::atoll(argv[i]));
  if (threads < 1 || seconds <= 0 || intra_op < 1 || (device_name != "cpu" && device_name != "cuda") ||
      (dtype != "float32" && dtype != "int64")) {
    std::fprintf(stderr, "bench_ts_threads: bad arguments (THREADS >= 1, SECONDS > 0, INTRA_OP_THREADS >= 1, "
                         "DEVICE cpu|cuda, DTYPE float32|int64)\n");
    return 2;
  }
  const bool cuda = device_name == "cuda";
  at::set_num_threads(intra_op);
  torch::jit::Module module;
  torch::Tensor input;
  try {
    const torch::Device device = cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
    module = torch::jit::load(file, device);
    module.eval();
    auto opts = torch::TensorOptions().device(device);
    input = dtype == "float32" ? torch::randn(shape, opts.dtype(torch::kFloat32))
                               : torch::randint(0, 1000, shape, opts.dtype(torch::kInt64));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_ts_threads: cannot load %s on %s: %s\n", file.c_str(), device_name.c_str(),
                 Message(e).c_str());
    return 1;
  }

  StartLine start_line(threads);
  std::vector<std::vector<double>> latencies_ms(threads);
  std::vector<std::string> errors(threads);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      c10::InferenceMode guard;
      auto call = [&] {
        module.forward({input});
        if (cuda) torch::cuda::synchronize();
      };
      bool warm = true;
      try {
        for (int i = 0; i < kWarmupCalls; ++i) call();
      } catch (const std::exception& e) {
        errors[t] = Message(e);
        warm = false;
      }
      const Clock::time_point stop =
          start_line.Arrive() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
      if (!warm) return;
      try {
        for (auto t0 = Clock::now(); t0 < stop; t0 = Clock::now()) {
          call();
          const auto t1 = Clock::now();
          if (t1 > stop) break;
          latencies_ms[t].push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
        }
      } catch (const std::exception& e) {
        errors[t] = Message(e);
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const auto& e : errors) {
    if (!e.empty()) {
      std::fprintf(stderr, "bench_ts_threads: %s failed in forward: %s\n", file.c_str(), e.c_str());
      return 1;
    }
  }
  std::vector<double> all;
  for (const auto& l : latencies_ms) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  std::printf("%.3f %.3f %.3f\n", all.size() / seconds, Percentile(all, 0.5), Percentile(all, 0.99));
  return 0;
}
