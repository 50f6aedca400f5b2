// CheckOutputTree: what shoald accepts from a worker before passing it to a client.
#include <functional>

#include "protocol/descriptor.h"
#include "supervisor/output_check.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

void Tensor(Writer* w, uint64_t arena, uint64_t block, std::vector<int64_t> shape) {
  w->Map(1);
  w->Key("tensor");
  Descriptor d;
  d.arena = arena;
  d.block = block;
  d.offset = block;
  d.dtype = "float32";
  d.shape = shape;
  d.strides.assign(shape.size(), 1);
  d.Pack(w);
}

Status Check(const std::function<void(Writer*)>& build, std::vector<uint64_t>* blocks) {
  Writer w;
  build(&w);
  // Unpacked without Decode's limits: the check must hold on its own.
  auto oh = msgpack::unpack(w.body().data(), w.body().size());
  // Arena 1 (4 KiB) belongs to the job's client; arena 2 to somebody else.
  return CheckOutputTree(oh.get(), [](uint64_t arena, uint64_t* size) {
    *size = 4096;
    return arena == 1;
  }, blocks);
}

}  // namespace

TEST_CASE("output check lists the blocks of non-empty tensors in nested containers", "[output]") {
  std::vector<uint64_t> blocks;
  auto st = Check([](Writer* w) {
    w->Map(1);
    w->Key("tuple");
    w->pk().pack_array(3);
    Tensor(w, 1, 64, {4});
    Tensor(w, 1, 0, {0});  // empty: owns no block
    w->Map(1);
    w->Key("dict");
    w->pk().pack_array(1);
    w->pk().pack_array(2);
    w->Str("k");
    Tensor(w, 1, 128, {2});
  }, &blocks);
  REQUIRE(st.ok());
  CHECK(blocks == std::vector<uint64_t>{64, 128});
}

TEST_CASE("output check refuses a tensor in an arena the client does not own", "[output]") {
  std::vector<uint64_t> blocks;
  auto st = Check([](Writer* w) { Tensor(w, 2, 64, {4}); }, &blocks);
  CHECK(st.code() == Code::kInternal);
  CHECK(st.message().find("foreign arena") != std::string::npos);
}

TEST_CASE("output check refuses a tensor past the end of its arena", "[output]") {
  std::vector<uint64_t> blocks;
  auto st = Check([](Writer* w) { Tensor(w, 1, 4000, {100}); }, &blocks);
  CHECK_FALSE(st.ok());
}

TEST_CASE("output check stops at the nesting limit", "[output]") {
  std::vector<uint64_t> blocks;
  auto st = Check([](Writer* w) {
    for (int i = 0; i <= kMaxOutputDepth + 1; ++i) {
      w->Map(1);
      w->Key("list");
      w->pk().pack_array(1);
    }
    w->Map(1);
    w->Key("value");
    w->pk().pack_nil();
  }, &blocks);
  CHECK(st.message().find("nested too deeply") != std::string::npos);
}

TEST_CASE("output check refuses malformed nodes", "[output]") {
  std::vector<uint64_t> blocks;
  CHECK_FALSE(Check([](Writer* w) { w->Map(1); w->Key("nonsense"); w->Val(1); }, &blocks).ok());
  CHECK_FALSE(Check([](Writer* w) { w->Map(1); w->Key("dict"); w->pk().pack_array(1); w->Val(1); }, &blocks).ok());
  CHECK_FALSE(Check([](Writer* w) { w->Map(1); w->Key("list"); w->Val(1); }, &blocks).ok());
  CHECK(Check([](Writer* w) { w->Map(1); w->Key("float"); w->Val(1.5); }, &blocks).ok());
}
