// bench_roundtrip: the C++ client's round trip through shoald with an arena-backed input
// (no copy on the client side). Driven by bench/roundtrip.py and bench/inflight.py.
//   bench_roundtrip SOCKET MODEL BYTES ITERATIONS            -> "p50_us p99_us" of Infer
//   bench_roundtrip SOCKET MODEL BYTES ITERATIONS INFLIGHT   -> "jobs_per_s": ITERATIONS jobs,
//       INFLIGHT of them in flight on the one connection (1: Infer in a loop; more: InferAsync,
//       waiting for the oldest whenever INFLIGHT are out)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <future>
#include <vector>

#include "shoal/client.h"

namespace {

int Fail(const shoal::Status& st) {
  std::fprintf(stderr, "%s\n", st.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5 && argc != 6) {
    std::fprintf(stderr, "usage: bench_roundtrip SOCKET MODEL BYTES ITERATIONS [INFLIGHT]\n");
    return 2;
  }
  int64_t bytes = std::atoll(argv[3]);
  int iters = std::atoi(argv[4]);
  auto c = shoal::Client::Connect(argv[1], std::max<size_t>(256u << 20, 2 * bytes + (1 << 20)));
  if (!c.ok()) return Fail(c.status());
  auto x = (*c)->Empty({bytes / 4});
  if (!x.ok()) return Fail(x.status());
  x->fill_(1.0f);
  if (argc == 6) {
    int inflight = std::max(1, std::atoi(argv[5]));
    std::deque<std::future<shoal::Result<c10::IValue>>> out;
    for (int i = 0; i < iters / 10; ++i) {  // warm-up
      if (auto y = (*c)->Infer(argv[2], {*x}); !y.ok()) return Fail(y.status());
    }
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) {
      if (inflight == 1) {
        if (auto y = (*c)->Infer(argv[2], {*x}); !y.ok()) return Fail(y.status());
        continue;
      }
      if (static_cast<int>(out.size()) == inflight) {
        if (auto y = out.front().get(); !y.ok()) return Fail(y.status());
        out.pop_front();
      }
      out.push_back((*c)->InferAsync(argv[2], {*x}));
    }
    for (auto& f : out) {
      if (auto y = f.get(); !y.ok()) return Fail(y.status());
    }
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("%.1f\n", iters / s);
    return 0;
  }
  std::vector<double> us;
  for (int i = 0; i < iters + iters / 10; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = (*c)->Infer(argv[2], {*x});
    auto t1 = std::chrono::steady_clock::now();
    if (!y.ok()) return Fail(y.status());
    if (i >= iters / 10) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  std::printf("%.1f %.1f\n", us[us.size() / 2], us[us.size() * 99 / 100]);
  return 0;
}
