// CudaContextInUse (tensors/cuda_context.h), asked after every TorchScript job: it throws
// nothing inside, on any torch. On a torch without CUDA the first version asked for a
// primary context anyway, and the c10::Error it caught (a symbolised backtrace) made every
// TorchScript job on a CPU-only install ~0.6 ms slower. Exceptions are counted by this
// test binary's own __cxa_throw (tests/cpp/fixtures/count_throws.cc) where the toolchain
// lets it define one (tests/CMakeLists.txt).
#include <c10/util/Exception.h>

#include "tensors/cuda_context.h"
#include "tests/cpp/catch.h"

#ifdef SHOAL_COUNTS_THROWS
extern "C" int shoal_test_throws();  // tests/cpp/fixtures/count_throws.cc
#endif

TEST_CASE("asking whether a CUDA context is in use throws nothing, on any torch", "[tensors]") {
#ifdef SHOAL_COUNTS_THROWS
  // The count sees a library's throw (the control: a c10::Error, as torch raises them).
  int before = shoal_test_throws();
  try {
    TORCH_CHECK(false, "a control error");
  } catch (const c10::Error&) {
  }
  REQUIRE(shoal_test_throws() == before + 1);

  bool first = shoal::CudaContextInUse();
  before = shoal_test_throws();
  for (int i = 0; i < 100; ++i) CHECK(shoal::CudaContextInUse() == first);
  CHECK(shoal_test_throws() == before);
#else
  WARN("libstdc++ is linked statically here, so this binary cannot count throws: only the answers are checked");
  bool first = shoal::CudaContextInUse();
  for (int i = 0; i < 100; ++i) CHECK(shoal::CudaContextInUse() == first);
#endif
}
