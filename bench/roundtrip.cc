// bench_roundtrip: p50/p99 of a job's round trip through shoald with the C++ client and
// an arena-backed input (no copy on the client side). Driven by bench/roundtrip.py.
//   usage: bench_roundtrip SOCKET MODEL BYTES ITERATIONS
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "shoal/client.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: bench_roundtrip SOCKET MODEL BYTES ITERATIONS\n");
    return 2;
  }
  int64_t bytes = std::atoll(argv[3]);
  int iters = std::atoi(argv[4]);
  auto c = shoal::Client::Connect(argv[1], std::max<size_t>(256u << 20, 2 * bytes + (1 << 20)));
  if (!c.ok()) {
    std::fprintf(stderr, "%s\n", c.status().ToString().c_str());
    return 1;
  }
  auto x = (*c)->Empty({bytes / 4});
  if (!x.ok()) {
    std::fprintf(stderr, "%s\n", x.status().ToString().c_str());
    return 1;
  }
  x->fill_(1.0f);
  std::vector<double> us;
  for (int i = 0; i < iters + iters / 10; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    auto y = (*c)->Infer(argv[2], {*x});
    auto t1 = std::chrono::steady_clock::now();
    if (!y.ok()) {
      std::fprintf(stderr, "%s\n", y.status().ToString().c_str());
      return 1;
    }
    if (i >= iters / 10) us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  std::sort(us.begin(), us.end());
  std::printf("%.1f %.1f\n", us[us.size() / 2], us[us.size() * 99 / 100]);
  return 0;
}
