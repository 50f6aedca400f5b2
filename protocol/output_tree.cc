#include "protocol/output_tree.h"

#include <cstring>

#include "protocol/descriptor.h"
#include "protocol/dtypes.h"
#include "protocol/messages.h"
#include "shm/gpu_memory.h"

namespace shoal {

namespace {
// Host outputs up to this size already in the block's layout are copied by the encoder
// itself (std::memcpy); larger ones by the engine, whose copy may use several threads.
constexpr uint64_t kDirectCopyBytes = 128 << 10;
// The advice of every error for what a message cannot hold.
constexpr const char* kUseTensors = "send large data as tensors (they travel in shared memory, not in the message)";
}  // namespace

namespace {

using Kind = OutputValue::Kind;

// The Python name of a kind, as the model's author would write it.
std::string TypeName(const OutputValue& v) {
  switch (v.kind()) {
    case Kind::kTensor: return "Tensor";
    case Kind::kTuple: return "tuple";
    case Kind::kList: return "list";
    case Kind::kDict: return "dict";
    case Kind::kFloat: return "float";
    case Kind::kInt: return "int";
    case Kind::kBool: return "bool";
    case Kind::kStr: return "str";
    case Kind::kNone: return "NoneType";
    case Kind::kOther: break;
  }
  return v.OtherTypeName();
}

std::string DTypeNames() {
  std::string out;
  for (const auto& d : kDTypes) {
    if (!out.empty()) out += ", ";
    out += d.name;
  }
  return out;
}

Status ModelError(std::string message) { return Status(Code::kModelError, std::move(message)); }

// One job's encoding: the tree goes into `w_`; blocks it allocates are remembered so that a
// failure part-way frees them all.
class Encoder {
 public:
  explicit Encoder(const OutputPlacement& place) : place_(place) {}
  // A call structure's encoder: each tensor becomes {"input": tensor(v)}.
  explicit Encoder(const CallTensorFn& tensor) : place_(kNoPlacement), tensor_(&tensor) {}
  Encoder(const Encoder&) = delete;
  Encoder& operator=(const Encoder&) = delete;

  Writer* writer() { return &w_; }
  Status Node(OutputValue& v, int depth);
  void FreeAllocated() {
    for (const auto& b : allocated_) place_.outputs->Free(b.arena, b.offset);
    allocated_.clear();
  }

 private:
  Status Int(const OutputValue& v);
  Status Tensor(OutputValue& v);
  // What cannot be encoded: the model's error in an output, the caller's in a call.
  Status Error(const std::string& what) const {
    return tensor_ != nullptr ? Status::BadRequest("argument " + what) : ModelError("output " + what);
  }
  // Within what a message may hold (protocol/messages.h): a string, or a container of `n`.
  Status FitsMessage(const std::string& text) const {
    if (text.size() <= kMaxMessageStrBytes) return Status::Ok();
    return Error("string of " + std::to_string(text.size()) + " bytes, over the " +
                 std::to_string(kMaxMessageStrBytes) + " a message may hold; " + kUseTensors);
  }
  Status FitsMessage(size_t n, const char* what) const {
    if (n <= kMaxMessageArrayItems) return Status::Ok();
    return Error(std::string(what) + " of " + std::to_string(n) + " items, over the " +
                 std::to_string(kMaxMessageArrayItems) + " a message may hold; " + kUseTensors);
  }

  static const OutputPlacement kNoPlacement;
  const OutputPlacement& place_;
  const CallTensorFn* tensor_ = nullptr;
  Writer w_;
  std::vector<OutputBlock> allocated_;
};

const OutputPlacement Encoder::kNoPlacement{};

Status Encoder::Node(OutputValue& v, int depth) {
  if (depth > kMaxOutputDepth) {
    return Error("nested more than " + std::to_string(kMaxOutputDepth) + " levels deep");
  }
  switch (v.kind()) {
    case Kind::kTensor:
      w_.Map(1);
      if (tensor_ != nullptr) {
        auto index = (*tensor_)(v);
        if (!index.ok()) return index.status();
        w_.Key("input");
        w_.Val(*index);
        return Status::Ok();
      }
      w_.Key("tensor");
      return Tensor(v);
    case Kind::kFloat:
      // Its own node kind: MessagePack re-encoders may turn 4.0 into the integer 4.
      w_.Map(1);
      w_.Key("float");
      w_.Val(v.Float());
      return Status::Ok();
    case Kind::kInt:
      w_.Map(1);
      w_.Key("value");
      return Int(v);
    case Kind::kBool:
      w_.Map(1);
      w_.Key("value");
      w_.Val(v.Bool());
      return Status::Ok();
    case Kind::kStr: {
      std::string text = v.Str();
      if (auto st = FitsMessage(text); !st.ok()) return st;
      w_.Map(1);
      w_.Key("value");
      w_.Str(text);
      return Status::Ok();
    }
    case Kind::kNone:
      w_.Map(1);
      w_.Key("value");
      w_.pk().pack_nil();
      return Status::Ok();
    case Kind::kTuple:
    case Kind::kList: {
      w_.Map(1);
      size_t n = v.Size();
      if (auto st = FitsMessage(n, v.kind() == Kind::kTuple ? "tuple" : "list"); !st.ok()) return st;
      if (auto fields = v.kind() == Kind::kTuple ? v.TupleFields() : std::vector<std::string>{}; !fields.empty()) {
        // {"namedtuple": [name, [field, ...], [node, ...]]}
        if (fields.size() != n) return Error("named tuple " + v.TupleName() + " has fields and items that differ");
        w_.Key("namedtuple");
        w_.pk().pack_array(3);
        w_.Str(v.TupleName().substr(0, kMaxTupleNameBytes));
        w_.pk().pack_array(static_cast<uint32_t>(n));
        for (const auto& f : fields) w_.Str(f.substr(0, kMaxTupleNameBytes));
      } else {
        w_.Key(v.kind() == Kind::kTuple ? "tuple" : "list");
      }
      w_.pk().pack_array(static_cast<uint32_t>(n));
      for (size_t i = 0; i < n; ++i) {
        if (auto st = Node(*v.Item(i), depth + 1); !st.ok()) return st;
      }
      return Status::Ok();
    }
    case Kind::kDict: {
      w_.Map(1);
      w_.Key("dict");
      size_t n = v.Size();
      if (auto st = FitsMessage(n, "dict"); !st.ok()) return st;
      w_.pk().pack_array(static_cast<uint32_t>(n));
      for (size_t i = 0; i < n; ++i) {
        w_.pk().pack_array(2);
        auto key = v.Key(i);
        if (key->kind() == Kind::kStr) {
          std::string text = key->Str();
          if (auto st = FitsMessage(text); !st.ok()) return st;
          w_.Str(text);
        } else if (key->kind() == Kind::kInt) {
          if (auto st = Int(*key); !st.ok()) return st;
        } else {
          return Error("dict key of type " + TypeName(*key) + "; use str or int keys");
        }
        if (auto st = Node(*v.Value(i), depth + 1); !st.ok()) return st;
      }
      return Status::Ok();
    }
    case Kind::kOther: break;
  }
  if (tensor_ != nullptr) {
    return Status::BadRequest("an argument of type " + TypeName(v) +
                              " cannot be sent; pass tensors, tuples, lists, dicts (str/int keys), numbers, "
                              "bools, strings or None");
  }
  return ModelError("the model returned a " + TypeName(v) +
                    ", which shoal cannot send back; return tensors, tuples, lists, dicts (str/int keys) "
                    "or Python scalars");
}

Status Encoder::Int(const OutputValue& v) {
  OutputInt i = v.Int();
  switch (i.range) {
    case OutputInt::kSigned: w_.Val(i.s); return Status::Ok();
    case OutputInt::kUnsigned: w_.Val(i.u); return Status::Ok();
    case OutputInt::kTooLarge: break;
  }
  return Error("integer " + i.text + " does not fit in 64 bits");
}

Status Encoder::Tensor(OutputValue& v) {
  auto t = v.Tensor(place_.keep_gpu);
  if (!t.ok()) return ModelError("an output tensor cannot be read: " + t.status().message());
  if (t->dtype.empty()) {
    return ModelError("output dtype " + t->engine_dtype + " cannot travel through shoal; use one of " +
                      DTypeNames());
  }
  Descriptor d;
  d.dtype = t->dtype;
  d.shape = t->shape;
  d.strides = t->strides;
  auto extent = d.Extent();
  if (!extent.ok()) return ModelError("an output tensor cannot travel: " + extent.status().message());
  if (*extent == 0) {
    d.strides = ContiguousStrides(d.shape);
    // No bytes, no arena: the GPU it was on travels by name, unless host tensors were asked.
    if (t->device >= 0 && place_.keep_gpu) d.gpu = GpuBusOfOrdinal(t->device).value_or("");
    d.Pack(&w_);
    return Status::Ok();
  }
  // Already inside an input (the input itself, or a view of it)? It goes back where it is,
  // if its bytes are its values (OutputTensor::plain; not a lazy negation of the input).
  auto data = reinterpret_cast<uintptr_t>(t->data);
  if (t->plain) {
    for (const auto& in : place_.inputs) {
      auto base = reinterpret_cast<uintptr_t>(in.base);
      if (data < base) continue;
      uint64_t off = data - base;
      if (in.start <= off && off <= in.end && *extent <= in.end - off) {
        d.arena = in.arena;
        d.block = in.block;
        d.offset = off;
        d.Pack(&w_);
        return Status::Ok();
      }
    }
  }
  // Otherwise one copy into a block of this worker's output arenas for the client.
  auto nbytes = d.LogicalBytes();
  if (!nbytes.ok()) return ModelError("an output tensor cannot travel: " + nbytes.status().message());
  auto block = place_.outputs->Allocate(place_.client, *nbytes, place_.limits, t->device);
  if (!block.ok()) return Status(Code::kArenaFull, "output does not fit: " + block.status().message());
  allocated_.push_back(*block);
  d.arena = block->arena;
  d.block = d.offset = block->offset;
  d.strides = ContiguousStrides(d.shape);
  if (t->device < 0 && t->plain && *nbytes <= kDirectCopyBytes && t->strides == d.strides) {
    // Host bytes already in the block's layout: copied here, not through the engine (a
    // Python call and three tensor operations a tensor for the Python engine).
    std::memcpy(block->data, t->data, *nbytes);
  } else if (auto st = v.CopyTensor(block->data, d.strides); !st.ok()) {
    return ModelError("an output tensor cannot be copied into the output arena: " + st.message());
  }
  d.Pack(&w_);
  return Status::Ok();
}

}  // namespace

namespace {
void PackUsage(Writer* w, const OutputUsage& u) {
  w->Map(3);
  w->Key("owner"); w->Val(u.owner);
  w->Key("bytes"); w->Val(u.bytes);
  w->Key("arenas"); w->Val(u.arenas);
}
}  // namespace

Result<EncodedReply> EncodeOutputReply(uint64_t job, std::string_view model, OutputValue& root,
                                       const OutputPlacement& place) {
  // The tree first (its size is not known before), then the reply around it.
  Encoder enc(place);
  if (auto st = enc.Node(root, 0); !st.ok()) {
    enc.FreeAllocated();
    return Status(st.code(), "model '" + std::string(model) + "', job " + std::to_string(job) + ": " + st.message());
  }
  auto tree = enc.writer()->body();
  if (tree.size() > kMaxOutputTreeBytes) {
    // Each string and container is within Decode's limits (the walk saw to it), but the
    // whole would be a frame nobody reads (shoald cuts off a worker that sends one).
    enc.FreeAllocated();
    return Status(Code::kModelError, "model '" + std::string(model) + "', job " + std::to_string(job) +
                                         ": its output encodes to " + std::to_string(tree.size()) +
                                         " bytes besides its tensors, over the limit of " +
                                         std::to_string(kMaxOutputTreeBytes) + "; " + kUseTensors);
  }
  auto fresh = place.outputs->TakeNew(place.client);
  EncodedReply out;
  Writer w;
  BeginReply(&w, job, fresh.empty() ? 2 : 3);
  w.Key("outputs");
  w.pk().pack_bin_body(tree.data(), static_cast<uint32_t>(tree.size()));  // already MessagePack
  w.Key("usage");
  PackUsage(&w, place.outputs->Usage());
  if (!fresh.empty()) {
    w.Key("new_arenas");
    w.pk().pack_array(static_cast<uint32_t>(fresh.size()));
    for (const auto& a : fresh) {
      std::string bus;
      if (a.device >= 0) bus = GpuBusOfOrdinal(a.device).value_or("");
      w.Map(bus.empty() ? 2 : 3);
      w.Key("arena"); w.Val(a.arena);
      w.Key("size"); w.Val(a.size);
      if (!bus.empty()) {
        w.Key("gpu"); w.Str(bus);
      }
      out.fds.push_back(a.fd);
    }
  }
  out.body = std::string(w.body());
  return out;
}

OutputLimits OutputLimitsOf(const MapView& infer) {
  OutputLimits l;
  if (auto b = infer.OptUint("out_bytes"); b.ok() && b->has_value() && **b >= 4096) l.arena_bytes = **b;
  if (auto n = infer.OptUint("out_arenas"); n.ok() && n->has_value() && **n >= 1 && **n <= 4096) {
    l.arenas_per_client = static_cast<uint32_t>(**n);
  }
  return l;
}

bool KeepGpuOutputs(const MapView& infer) {
  auto o = infer.OptStr("outputs");
  return !(o.ok() && o->has_value() && **o == "cpu");
}

Result<std::string> EncodeCallNode(OutputValue& v, const CallTensorFn& tensor) {
  Encoder enc(tensor);
  if (auto st = enc.Node(v, 0); !st.ok()) return st;
  return std::string(enc.writer()->body());
}

std::string UsageNotice(const OutputUsage& usage) {
  Writer w;
  BeginNotice(&w, "usage", 1);
  w.Key("usage");
  PackUsage(&w, usage);
  return std::string(w.body());
}

}  // namespace shoal
