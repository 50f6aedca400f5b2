// Shared GPU weights, shoald's side alone (supervisor/gpu_weights.h): who uploads, who
// waits, who maps, and what a failed upload or an unload does. No GPU needed: the
// "allocations" are pipe ends (shoald only holds and passes the descriptors).
#include <unistd.h>

#include <memory>
#include <string>
#include <vector>

#include "supervisor/gpu_weights.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {
std::shared_ptr<OwnedFd> SomeFd() {
  int p[2];
  REQUIRE(pipe(p) == 0);
  close(p[1]);
  return std::make_shared<OwnedFd>(p[0]);
}
constexpr const char* kGpu0 = "0000:19:00.0";
constexpr const char* kGpu1 = "0000:3b:00.0";
}  // namespace

TEST_CASE("the first load on a GPU uploads, the others wait and then map that copy", "[gpu_weights]") {
  GpuWeights w;
  std::vector<std::string> resumed;
  auto first = w.Begin("m", kGpu0, [] { FAIL("the uploader does not wait"); });
  REQUIRE(first.step == GpuWeights::Step::kUpload);
  CHECK(w.Begin("m", kGpu0, [&] { resumed.push_back("a"); }).step == GpuWeights::Step::kWait);
  CHECK(w.Begin("m", kGpu0, [&] { resumed.push_back("b"); }).step == GpuWeights::Step::kWait);
  // Another GPU has its own copy, uploaded in parallel.
  CHECK(w.Begin("m", kGpu1, [] {}).step == GpuWeights::Step::kUpload);
  CHECK(resumed.empty());
  auto fd = SomeFd();
  w.Uploaded("m", kGpu0, first.ticket, fd, 1 << 20);
  CHECK(resumed == std::vector<std::string>{"a", "b"});
  auto next = w.Begin("m", kGpu0, [] {});
  CHECK(next.step == GpuWeights::Step::kMap);
  CHECK(next.memory == fd);
  CHECK(next.bytes == (1u << 20));
  auto held = w.List();
  REQUIRE(held.size() == 1);  // GPU 1's upload has not finished
  CHECK(held[0].bus == kGpu0);
  CHECK(held[0].model == "m");
  CHECK(held[0].uploads == 1);
}

TEST_CASE("a failed upload hands the upload to the next load; a model without GPU weights loads plainly",
          "[gpu_weights]") {
  GpuWeights w;
  auto first = w.Begin("m", kGpu0, [] {});
  int resumed = 0;
  CHECK(w.Begin("m", kGpu0, [&] { ++resumed; }).step == GpuWeights::Step::kWait);
  w.Failed("m", kGpu0, first.ticket);  // e.g. the uploading worker crashed
  CHECK(resumed == 1);
  auto second = w.Begin("m", kGpu0, [] {});
  REQUIRE(second.step == GpuWeights::Step::kUpload);
  CHECK(second.ticket != first.ticket);
  w.Uploaded("m", kGpu0, second.ticket, nullptr, 0);  // it put nothing on the GPU
  CHECK(w.Begin("m", kGpu0, [] {}).step == GpuWeights::Step::kPlain);
  CHECK(w.List().empty());
}

TEST_CASE("unload drops the copies; an upload that ends after the unload is not kept", "[gpu_weights]") {
  GpuWeights w;
  auto a = w.Begin("m:1", kGpu0, [] {});
  w.Uploaded("m:1", kGpu0, a.ticket, SomeFd(), 4096);
  auto b = w.Begin("m:2", kGpu0, [] {});
  w.Uploaded("m:2", kGpu0, b.ticket, SomeFd(), 8192);
  CHECK(w.List().size() == 2);  // each version its own copy
  auto late = w.Begin("n", kGpu0, [] {});
  int resumed = 0;
  CHECK(w.Begin("n", kGpu0, [&] { ++resumed; }).step == GpuWeights::Step::kWait);
  w.Forget("n");
  CHECK(resumed == 1);  // a waiting load learns of it at once
  w.Uploaded("n", kGpu0, late.ticket, SomeFd(), 4096);  // the old upload's answer
  w.Forget("m:1");
  auto held = w.List();
  REQUIRE(held.size() == 1);
  CHECK(held[0].model == "m:2");
  // Loaded again after the unload: a new upload.
  CHECK(w.Begin("m:1", kGpu0, [] {}).step == GpuWeights::Step::kUpload);
}
