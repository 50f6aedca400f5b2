// GPU placement alone (supervisor/gpu_placement.h): which GPU each slot gets, what a
// worker's CUDA_VISIBLE_DEVICES is, and the check of a load's device. No GPU needed.
#include <cstdlib>

#include "supervisor/gpu_placement.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("workers go round-robin over the GPUs, each seeing its own alone", "[gpu]") {
  unsetenv("CUDA_VISIBLE_DEVICES");
  GpuPlacement p;
  REQUIRE(p.Apply({"0000:01:00.0", "0000:02:00.0"}, "all").ok());
  CHECK(p.count() == 2);
  CHECK(p.GpuOf(0) == 0);
  CHECK(p.GpuOf(3) == 1);
  CHECK(p.BusOf(2) == "0000:01:00.0");
  CHECK(p.CudaVisible(1).value() == "1");
  CHECK(p.Places(1, "cuda:1"));
  CHECK_FALSE(p.Places(2, "cuda:1"));
  CHECK(p.Places(2, "cuda"));
  CHECK(p.Places(2, "cpu"));
}

TEST_CASE("a chosen subset of GPUs keeps shoald's own CUDA_VISIBLE_DEVICES names", "[gpu]") {
  setenv("CUDA_VISIBLE_DEVICES", "3,5,7", 1);
  GpuPlacement p;
  REQUIRE(p.Apply({"a", "b", "c"}, "2,0").ok());
  CHECK(p.count() == 2);
  CHECK(p.CudaVisible(0).value() == "7");
  CHECK(p.CudaVisible(1).value() == "3");
  CHECK(p.BusOf(0) == "c");
  auto bad = p.Apply({"a", "b", "c"}, "4");
  CHECK(bad.code() == Code::kBadRequest);
  CHECK(bad.message().find("GPU 4 does not exist") != std::string::npos);
  CHECK(p.Apply({"a"}, "x").code() == Code::kBadRequest);
  unsetenv("CUDA_VISIBLE_DEVICES");
}

TEST_CASE("without GPUs, workers are left alone; with gpus=none they see none", "[gpu]") {
  GpuPlacement none_found;
  REQUIRE(none_found.Apply({}, "all").ok());
  CHECK_FALSE(none_found.CudaVisible(0).has_value());
  CHECK(none_found.GpuOf(0) == -1);
  GpuPlacement hidden;
  REQUIRE(hidden.Apply({"a"}, "none").ok());
  CHECK(hidden.CudaVisible(0).value().empty());
  CHECK(hidden.count() == 0);
}

TEST_CASE("a load's device is checked against the GPUs workers have", "[gpu]") {
  GpuPlacement p;
  REQUIRE(p.Apply({"a", "b"}, "all").ok());
  CHECK(p.CheckDevice("m", "").value() == "auto");
  CHECK(p.CheckDevice("m", "cpu").value() == "cpu");
  CHECK(p.CheckDevice("m", "cuda").value() == "cuda");
  CHECK(p.CheckDevice("m", "cuda:1").value() == "cuda:1");
  auto far = p.CheckDevice("m", "cuda:2");
  CHECK(far.status().code() == Code::kUnavailable);
  CHECK(far.status().message().find("GPUs 0..1") != std::string::npos);
  CHECK(p.CheckDevice("m", "tpu").status().code() == Code::kBadRequest);
  GpuPlacement none;
  REQUIRE(none.Apply({}, "all").ok());
  auto st = none.CheckDevice("m", "cuda");
  CHECK(st.status().code() == Code::kUnavailable);
  CHECK(st.status().message().find("model 'm' cannot load on cuda") != std::string::npos);
  CHECK(GpuPlacement::WorkerDevice("cuda:1") == "cuda");
  CHECK(GpuPlacement::WorkerDevice("") == "auto");
}

TEST_CASE("only the GPUs workers are placed on are known", "[gpu]") {
  GpuPlacement p;
  REQUIRE(p.Apply({"a", "b"}, "1").ok());
  CHECK(p.Knows("b"));
  CHECK_FALSE(p.Knows("a"));
  CHECK_FALSE(p.Knows(""));
}
