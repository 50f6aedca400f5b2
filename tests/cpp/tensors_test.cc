// The shared definitions on the libtorch side: the one dtype table agrees with torch, and
// the one output encoder (protocol/output_tree.h) over c10::IValue produces trees that the
// client's decoder (tensors/tree.h) rebuilds, with in-memory arenas: the input arena a
// client owns, and the output arenas (shm/output_arenas.h) the encoder allocates from.
#include <torch/types.h>

#include <unistd.h>

#include <map>
#include <string>
#include <vector>

#include "protocol/descriptor.h"
#include "protocol/dtypes.h"
#include "protocol/messages.h"
#include "protocol/output_tree.h"
#include "shm/arena.h"
#include "tensors/ivalue_output.h"
#include "tensors/tree.h"
#include "tests/cpp/catch.h"

using namespace shoal;

TEST_CASE("every dtype of the table is a torch scalar type of the same size and storage class", "[tensors]") {
  REQUIRE(std::size(kDTypes) == 12);
  for (const auto& d : kDTypes) {
    auto type = ScalarTypeOf(d.name);
    REQUIRE(type.has_value());
    CHECK(c10::elementSize(*type) == d.size);
    CHECK(std::string(c10::toString(*type)) == d.scalar_type);
    CHECK(std::string(d.storage) == std::string(d.scalar_type) + "Storage");
    CHECK(DTypeName(*type) == d.name);
    CHECK(DTypeSize(d.name) == d.size);
  }
  CHECK_FALSE(ScalarTypeOf("qint8").has_value());
  CHECK(DTypeName(at::kQInt8).empty());
}

namespace {

// One job's input arena (the client's, id 7: input x at block `in_block`), the worker's
// output arenas, and its encoding.
struct Job {
  std::unique_ptr<Arena> arena;
  uint64_t in_block = 0;
  torch::Tensor x;
  OutputArenas outputs{0};
  std::map<uint64_t, std::unique_ptr<Arena>> out_arenas;  // as the client maps them
  OutputPlacement place;

  explicit Job(uint64_t out_arena_bytes = 1 << 20, uint32_t out_arenas_per_client = 8) {
    arena = std::move(*Arena::Create("tensors-test", 1 << 20));
    in_block = *arena->Allocate(6 * sizeof(float));
    x = torch::from_blob(arena->base() + in_block, {2, 3}, torch::kFloat);
    x.copy_(torch::arange(6, torch::kFloat).reshape({2, 3}));
    place.outputs = &outputs;
    place.client = 1;
    place.limits = {out_arena_bytes, out_arenas_per_client};
    place.inputs.push_back({7, in_block, in_block, in_block + 6 * sizeof(float), arena->base()});
  }

  Result<std::string> Encode(c10::IValue v) {
    IValueOutput root(std::move(v));
    auto reply = EncodeOutputReply(42, "m", root, place);
    if (!reply.ok()) return reply.status();
    auto oh = shoal::Decode(reply->body);
    REQUIRE(oh.ok());
    if (const auto* fresh = MapView(oh->get()).Find("new_arenas")) {  // map them as the client would
      REQUIRE(fresh->via.array.size == reply->fds.size());
      for (uint32_t i = 0; i < fresh->via.array.size; ++i) {
        uint64_t id = *MapView(fresh->via.array.ptr[i]).Uint("arena");
        out_arenas[id] = std::move(*Arena::Open(dup(reply->fds[i])));
      }
    }
    return std::move(reply->body);
  }

  uint8_t* Base(uint64_t arena_id) { return arena_id == 7 ? arena->base() : out_arenas.at(arena_id)->base(); }

  // The reply's tree, decoded as the C++ client does; `descs` collects the descriptors.
  c10::IValue Decode(const std::string& reply, std::vector<Descriptor>* descs) {
    auto oh = shoal::Decode(reply);
    REQUIRE(oh.ok());
    MapView m(oh->get());
    REQUIRE(*m.Bool("ok"));
    REQUIRE(*m.Uint("id") == 42);
    auto tree = DecodeTree(*m.Find("outputs"), [&](const Descriptor& d) -> Result<torch::Tensor> {
      descs->push_back(d);
      if (d.Extent().value() == 0) return torch::empty(d.shape, torch::dtype(*ScalarTypeOf(d.dtype)));
      return torch::from_blob(Base(d.arena) + d.offset, d.shape, d.strides, torch::dtype(*ScalarTypeOf(d.dtype)))
          .clone();
    });
    REQUIRE(tree.ok());
    return *tree;
  }
};

c10::IValue Nest(c10::IValue v, int levels) {
  for (int i = 0; i < levels; ++i) v = c10::ivalue::Tuple::create({std::move(v)});
  return v;
}

c10::IValue NestInDicts(c10::IValue v, int levels) {
  for (int i = 0; i < levels; ++i) {
    c10::impl::GenericDict d(c10::StringType::get(), c10::AnyType::get());
    d.insert("k", std::move(v));
    v = d;
  }
  return v;
}

}  // namespace

TEST_CASE("an output tree round-trips: inputs in place, new tensors copied, empty ones at block 0", "[tensors]") {
  Job job;
  c10::impl::GenericDict named(c10::StringType::get(), c10::AnyType::get());
  named.insert("twice", job.x * 2);
  c10::impl::GenericDict numbered(c10::IntType::get(), c10::AnyType::get());
  numbered.insert(int64_t{-3}, std::string("minus three"));
  c10::impl::GenericList list(c10::AnyType::get());
  list.push_back(job.x.slice(0, 1));
  list.push_back(2.5);
  list.push_back(c10::IValue());
  auto out = c10::ivalue::Tuple::create({job.x, list, named, numbered, torch::zeros({0, 3}), true, int64_t{7}});
  auto reply = job.Encode(out);
  REQUIRE(reply.ok());
  std::vector<Descriptor> descs;
  auto tree = job.Decode(*reply, &descs);
  auto items = tree.toTupleRef().elements();
  REQUIRE(items.size() == 7);
  CHECK(torch::equal(items[0].toTensor(), job.x));
  auto decoded_list = items[1].toListRef();
  CHECK(torch::equal(decoded_list[0].toTensor(), job.x.slice(0, 1)));
  CHECK(decoded_list[1].toDouble() == 2.5);
  CHECK(decoded_list[2].isNone());
  CHECK(torch::equal(items[2].toGenericDict().at("twice").toTensor(), job.x * 2));
  CHECK(items[3].toGenericDict().at(int64_t{-3}).toStringRef() == "minus three");
  CHECK(items[4].toTensor().sizes() == c10::IntArrayRef({0, 3}));
  CHECK(items[5].toBool());
  CHECK(items[6].toInt() == 7);
  REQUIRE(descs.size() == 4);  // x, its view, x * 2, the empty one
  CHECK((descs[0].block == job.in_block && descs[0].offset == job.in_block));
  CHECK((descs[1].block == job.in_block && descs[1].offset == job.in_block + 3 * sizeof(float)));
  CHECK((descs[0].arena == 7 && descs[1].arena == 7));  // inputs go back where they are
  CHECK((IsWorkerArena(descs[2].arena) && descs[2].offset == descs[2].block && descs[2].block != 0));
  CHECK((descs[3].block == 0 && descs[3].offset == 0 && descs[3].strides == std::vector<int64_t>{3, 1}));
}

TEST_CASE("an output 16 levels deep travels, 17 levels is a model error and frees its copies", "[tensors]") {
  Job job;
  REQUIRE(job.Encode(Nest(job.x, kMaxOutputDepth)).ok());
  // The deepest tree (dicts nest deepest in MessagePack) still decodes as a message.
  auto dicts = job.Encode(NestInDicts(job.x + 1, kMaxOutputDepth));
  REQUIRE(dicts.ok());
  std::vector<Descriptor> descs;
  auto tree = job.Decode(*dicts, &descs);
  for (int i = 0; i < kMaxOutputDepth; ++i) tree = tree.toGenericDict().at("k");
  CHECK(torch::equal(tree.toTensor(), job.x + 1));
  uint64_t used_before = job.outputs.Usage().bytes;
  auto deep = c10::ivalue::Tuple::create({job.x + 1, Nest(job.x * 3, kMaxOutputDepth)});
  auto reply = job.Encode(deep);
  REQUIRE_FALSE(reply.ok());
  CHECK(reply.status().code() == Code::kModelError);
  CHECK(reply.status().message() == "model 'm', job 42: output nested more than 16 levels deep");
  CHECK(job.outputs.Usage().bytes == used_before);  // the copy of x + 1 was given back
}

TEST_CASE("an output dict key that is not str or int is a model error naming model and job", "[tensors]") {
  Job job;
  c10::impl::GenericDict by_float(c10::FloatType::get(), c10::AnyType::get());
  by_float.insert(1.5, job.x);
  auto reply = job.Encode(by_float);
  REQUIRE_FALSE(reply.ok());
  CHECK(reply.status().code() == Code::kModelError);
  CHECK(reply.status().message() == "model 'm', job 42: output dict key of type float; use str or int keys");
}

TEST_CASE("outputs that cannot travel are model errors, and a full arena is ARENA_FULL", "[tensors]") {
  Job job;
  auto quantized = torch::quantize_per_tensor(torch::ones({2}), 0.1, 0, torch::kQInt8);
  auto reply = job.Encode(quantized);
  REQUIRE_FALSE(reply.ok());
  CHECK(reply.status().message().find("output dtype torch.QInt8 cannot travel through shoal; use one of float32") !=
        std::string::npos);
  auto device = job.Encode(c10::IValue(c10::Device(c10::kCPU)));
  REQUIRE_FALSE(device.ok());
  CHECK(device.status().message().find("the model returned a Device, which shoal cannot send back") !=
        std::string::npos);
  Job small(64 << 10, /*out_arenas_per_client=*/1);
  REQUIRE(small.Encode(torch::zeros({1024})).ok());  // held by the client: the one arena is in use
  auto big = small.Encode(torch::zeros({1 << 20}));
  REQUIRE_FALSE(big.ok());
  CHECK(big.status().code() == Code::kArenaFull);
  CHECK(big.status().message().rfind("model 'm', job 42: output does not fit: no room for an output of 4194304 bytes",
                                     0) == 0);
  CHECK(big.status().message().find("output_arenas") != std::string::npos);
}

TEST_CASE("an output larger than the default arena gets an arena of its own size", "[tensors]") {
  Job job(64 << 10);
  auto reply = job.Encode(torch::ones({1 << 16}));  // 256 KiB
  REQUIRE(reply.ok());
  std::vector<Descriptor> descs;
  CHECK(torch::equal(job.Decode(*reply, &descs).toTensor(), torch::ones({1 << 16})));
  CHECK(job.out_arenas.size() == 1);
}

TEST_CASE("a named tuple keeps its type's name and fields through the tree", "[tensors]") {
  Job job;
  std::vector<std::string> fields = {"boxes", "score"};
  std::vector<c10::TypePtr> types = {c10::TensorType::get(), c10::FloatType::get()};
  auto type = c10::TupleType::createNamed(c10::QualifiedName("__torch__.Detection"), fields, types);
  auto out = c10::ivalue::Tuple::createNamed({job.x * 3, 0.5}, type);
  auto reply = job.Encode(out);
  REQUIRE(reply.ok());
  CHECK(reply->find("namedtuple") != std::string::npos);
  std::vector<Descriptor> descs;
  auto tree = job.Decode(*reply, &descs);
  REQUIRE(tree.isTuple());
  auto decoded = tree.toTupleRef().type();
  REQUIRE(decoded->schema());
  CHECK(decoded->name()->name() == "Detection");
  CHECK(decoded->schema()->arguments().at(0).name() == "boxes");
  CHECK(decoded->schema()->arguments().at(1).name() == "score");
  CHECK(torch::equal(tree.toTupleRef().elements()[0].toTensor(), job.x * 3));
  CHECK(tree.toTupleRef().elements()[1].toDouble() == 0.5);
}
