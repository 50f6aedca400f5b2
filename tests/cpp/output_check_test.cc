// CheckOutputTree: what shoald accepts from a worker before passing it to a client.
#include <functional>

#include "protocol/descriptor.h"
#include "supervisor/output_check.h"
#include "tests/cpp/catch.h"

using namespace shoal;

namespace {

void Tensor(Writer* w, uint64_t arena, uint64_t block, std::vector<int64_t> shape, const std::string& gpu = "") {
  w->Map(1);
  w->Key("tensor");
  Descriptor d;
  d.arena = arena;
  d.block = block;
  d.offset = block;
  d.dtype = "float32";
  d.shape = shape;
  d.strides.assign(shape.size(), 1);
  d.gpu = gpu;
  d.Pack(w);
}

// Arena 1 (4 KiB) is the job's client's own; worker arena 0x8...07 is the worker's output
// arena for that client (the client knows it as 7); arena 2 belongs to somebody else.
constexpr uint64_t kWorkerArena = (uint64_t{1} << 63) | 7;

Status Check(const std::function<void(Writer*)>& build, std::vector<uint64_t>* blocks, std::string* rewritten = nullptr,
             const std::string& worker_gpu = "") {
  Writer w;
  build(&w);
  // Unpacked without Decode's limits: the check must hold on its own.
  auto oh = msgpack::unpack(w.body().data(), w.body().size());
  std::vector<WorkerBlock> worker_blocks;
  Writer out;
  auto st = CheckOutputTree(oh.get(), [](uint64_t arena, OutputArenaRef* ref) {
    if (arena == 1) *ref = {1, 4096, false};
    if (arena == kWorkerArena) *ref = {7, 4096, true};
    return arena == 1 || arena == kWorkerArena;
  }, &out, &worker_blocks, worker_gpu);
  for (const auto& b : worker_blocks) blocks->push_back(b.block);
  if (rewritten != nullptr) *rewritten = std::string(out.body());
  return st;
}

}  // namespace

TEST_CASE("output check lists the blocks of non-empty tensors in nested containers", "[output]") {
  std::vector<uint64_t> blocks;
  auto st = Check([](Writer* w) {
    w->Map(1);
    w->Key("tuple");
    w->pk().pack_array(3);
    Tensor(w, kWorkerArena, 64, {4});
    Tensor(w, 1, 0, {0});  // empty: owns no block
    w->Map(1);
    w->Key("dict");
    w->pk().pack_array(1);
    w->pk().pack_array(2);
    w->Str("k");
    Tensor(w, kWorkerArena, 128, {2});
  }, &blocks);
  REQUIRE(st.ok());
  CHECK(blocks == std::vector<uint64_t>{64, 128});
}

TEST_CASE("output check never lists a block of the client's own arena (an input returned in place)", "[output]") {
  std::vector<uint64_t> blocks;
  REQUIRE(Check([](Writer* w) { Tensor(w, 1, 0, {4}); }, &blocks).ok());  // block 0 of an input arena
  CHECK(blocks.empty());
}

TEST_CASE("output check names worker arenas by the client's ids", "[output]") {
  std::vector<uint64_t> blocks;
  std::string out;
  REQUIRE(Check([](Writer* w) { Tensor(w, kWorkerArena, 64, {4}); }, &blocks, &out).ok());
  auto oh = msgpack::unpack(out.data(), out.size());
  auto d = Descriptor::Parse(oh.get().via.map.ptr[0].val);
  REQUIRE(d.ok());
  CHECK(d->arena == 7);
  CHECK(d->block == 64);
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

TEST_CASE("output check passes a tensor's GPU only for an empty tensor on the worker's own GPU", "[output]") {
  const std::string mine = "0000:19:00.0", other = "0000:3b:00.0";
  auto gpu_of = [&](uint64_t arena, std::vector<int64_t> shape, const std::string& gpu) {
    std::vector<uint64_t> blocks;
    std::string out;
    REQUIRE(Check([&](Writer* w) { Tensor(w, arena, 64, shape, gpu); }, &blocks, &out, mine).ok());
    auto oh = msgpack::unpack(out.data(), out.size());
    auto d = Descriptor::Parse(oh.get().via.map.ptr[0].val);
    REQUIRE(d.ok());
    return d->gpu;
  };
  CHECK(gpu_of(kWorkerArena, {0, 3}, mine) == mine);   // an empty CUDA output of this worker
  CHECK(gpu_of(kWorkerArena, {0, 3}, other) == "");    // a GPU the worker cannot see
  CHECK(gpu_of(kWorkerArena, {4}, mine) == "");        // bytes: where its arena is
}
