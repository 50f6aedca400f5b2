#include "worker/torchscript.h"

#include <torch/script.h>
#include <unistd.h>

#include <mutex>
#include <shared_mutex>

#include "client/tree.h"
#include "package_format/archive_reader.h"
#include "protocol/descriptor.h"

namespace shoal {

namespace {

std::string OkReply(uint64_t id, const std::string& engine = "") {
  Writer w;
  BeginReply(&w, id, engine.empty() ? 0 : 1);
  if (!engine.empty()) { w.Key("engine"); w.Str(engine); }
  return std::string(w.body());
}

struct Span {
  uint64_t arena, block, start, end;
};

}  // namespace

struct TorchScriptModels::Impl {
  // Exclusive for loads, unloads and arena changes; shared while jobs run (several
  // interpreter threads may run TorchScript jobs at once: Module::forward is reentrant).
  std::shared_mutex mu;
  std::mutex map_mu;  // lazy mapping in Get() under a shared `mu`
  std::map<std::string, torch::jit::Module> models;
  // Arenas are mapped here only when a TorchScript job first needs them (the Python
  // runner maps them too; mapping every arena twice would double the address space).
  struct ArenaSlot {
    int fd = -1;
    std::unique_ptr<Arena> mapped;
  };
  std::map<uint64_t, ArenaSlot> arenas;

  ~Impl() {
    for (auto& [id, slot] : arenas) {
      if (!slot.mapped && slot.fd >= 0) close(slot.fd);
    }
  }
  void Drop(uint64_t id) {
    auto it = arenas.find(id);
    if (it == arenas.end()) return;
    if (!it->second.mapped && it->second.fd >= 0) close(it->second.fd);
    arenas.erase(it);
  }
  Arena* Get(uint64_t id) {
    std::lock_guard<std::mutex> lock(map_mu);
    auto it = arenas.find(id);
    if (it == arenas.end()) return nullptr;
    if (!it->second.mapped) {
      auto a = Arena::Open(it->second.fd);  // takes the fd, even on failure
      it->second.fd = -1;
      if (!a.ok()) return nullptr;
      it->second.mapped = std::move(*a);
    }
    return it->second.mapped.get();
  }
};

TorchScriptModels::TorchScriptModels() : impl_(std::make_unique<Impl>()) {}
TorchScriptModels::~TorchScriptModels() = default;

bool TorchScriptModels::Handle(const MapView& msg, const std::vector<int>& fds, std::string* reply) {
  auto op = msg.Str("op");
  if (!op.ok()) return false;
  if (*op == "infer") {
    std::shared_lock<std::shared_mutex> lock(impl_->mu);
    auto model = msg.Str("model");
    auto id = msg.Uint("id");
    if (!model.ok() || !id.ok() || impl_->models.count(*model) == 0) return false;
    *reply = Infer(*id, msg);
    return true;
  }
  std::unique_lock<std::shared_mutex> lock(impl_->mu);
  if (*op == "arena") {
    auto id = msg.Uint("arena");
    if (id.ok() && !fds.empty()) {
      impl_->Drop(*id);
      impl_->arenas[*id].fd = dup(fds.front());
    }
    return false;  // the Python runner maps it too
  }
  if (*op == "drop_arena") {
    if (auto id = msg.Uint("arena"); id.ok()) impl_->Drop(*id);
    return false;
  }
  auto id = msg.Uint("id");
  if (!id.ok()) return false;
  if (*op == "load") {
    auto name = msg.Str("name");
    auto path = msg.Str("path");
    if (!name.ok() || !path.ok()) return false;
    auto info = InspectArchiveFile(*path);
    if (!info.ok() || info->kind != ArchiveKind::kTorchScript) return false;
    *reply = Load(*id, *name, *path);
    return true;
  }
  auto model = msg.Str(*op == "unload" ? "name" : "model");
  if (!model.ok() || impl_->models.count(*model) == 0) return false;
  if (*op == "unload") {
    impl_->models.erase(*model);
    *reply = OkReply(*id);
    return true;
  }
  return false;
}

bool TorchScriptModels::Holds(const MapView& msg) {
  auto op = msg.Str("op");
  if (!op.ok() || *op != "infer") return false;
  auto model = msg.Str("model");
  std::shared_lock<std::shared_mutex> lock(impl_->mu);
  return model.ok() && impl_->models.count(*model) != 0;
}

std::string TorchScriptModels::Load(uint64_t id, const std::string& name, const std::string& path) {
  try {
    torch::jit::Module m = torch::jit::load(path, torch::kCPU);
    m.eval();
    impl_->models[name] = std::move(m);
  } catch (const std::exception& e) {
    return ErrorReply(id, Status(Code::kModelError, "model '" + name + "': TorchScript archive " + path +
                                                        " does not load: " + e.what()));
  }
  return OkReply(id, "libtorch");
}

std::string TorchScriptModels::Infer(uint64_t id, const MapView& msg) {
  auto name = *msg.Str("model");
  auto out_id = msg.Uint("out_arena");
  auto inputs = msg.Array("inputs");
  if (!out_id.ok() || !inputs.ok()) return ErrorReply(id, Status::Internal("malformed infer message"));
  Arena* out_arena = impl_->Get(*out_id);
  if (out_arena == nullptr) {
    return ErrorReply(id, Status(Code::kUnavailable, "worker cannot map the client's arena " +
                                                         std::to_string(*out_id) + "; is worker_memory_mb too small?"));
  }
  std::vector<torch::jit::IValue> args;
  std::vector<Span> spans;
  for (uint32_t i = 0; i < (*inputs)->via.array.size; ++i) {
    auto d = Descriptor::Parse((*inputs)->via.array.ptr[i]);
    Arena* a = d.ok() ? impl_->Get(d->arena) : nullptr;
    if (a == nullptr) return ErrorReply(id, Status::Internal("input " + std::to_string(i) + " is not in a mapped arena"));
    auto extent = *d->Extent();
    auto type = *ScalarTypeOf(d->dtype);
    args.emplace_back(torch::from_blob(a->base() + d->offset, d->shape, d->strides,
                                       torch::TensorOptions().dtype(type)));
    spans.push_back({d->arena, d->block, d->offset, d->offset + extent});
  }
  torch::jit::IValue out;
  try {
    c10::InferenceMode guard;
    out = impl_->models.at(name).forward(args);
  } catch (const std::exception& e) {
    return ErrorReply(id, Status(Code::kModelError, "model '" + name + "' raised in job " + std::to_string(id) +
                                                        ": " + e.what()));
  }
  // Encode the output tree; tensors that lie inside an input go back as they are, the
  // others are copied once into the client's arena.
  std::vector<uint64_t> allocated;
  Writer w;
  BeginReply(&w, id, 1);
  w.Key("outputs");
  Status failure;
  std::function<void(const torch::jit::IValue&, int)> encode = [&](const torch::jit::IValue& v, int depth) {
    if (depth > 16 && failure.ok()) failure = Status(Code::kModelError, "output nested too deeply");
    w.Map(1);
    if (v.isTensor()) {
      w.Key("tensor");
      torch::Tensor t = v.toTensor();
      if (!t.device().is_cpu()) t = t.cpu();
      Descriptor d;
      d.dtype = DTypeName(t.scalar_type());
      if (d.dtype.empty() && failure.ok()) failure = Status(Code::kModelError, "output dtype cannot travel");
      if (d.dtype.empty()) d.dtype = "uint8";
      d.shape = t.sizes().vec();
      d.strides = t.strides().vec();
      d.arena = *out_id;
      uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
      bool placed = nbytes == 0;
      for (const auto& s : spans) {
        if (placed) break;
        Arena* a = impl_->Get(s.arena);
        auto p = static_cast<uint8_t*>(t.data_ptr());
        if (p < a->base() || p >= a->base() + a->size()) continue;
        uint64_t off = static_cast<uint64_t>(p - a->base());
        d.offset = off;
        auto extent = d.Extent();
        if (extent.ok() && off >= s.start && off + *extent <= s.end) {
          d.arena = s.arena;
          d.block = s.block;
          placed = true;
        }
      }
      if (!placed) {
        auto block = out_arena->Allocate(nbytes);
        if (!block.ok()) {
          if (failure.ok()) failure = Status(Code::kArenaFull, "model '" + name + "', job " + std::to_string(id) +
                                                                   ": output does not fit the client's arena: " +
                                                                   block.status().message());
          d.block = d.offset = 0;
          d.shape.assign(d.shape.size(), 0);
        } else {
          allocated.push_back(*block);
          d.block = d.offset = *block;
          std::vector<int64_t> contiguous(d.shape.size());
          int64_t acc = 1;
          for (size_t i = d.shape.size(); i-- > 0;) {
            contiguous[i] = acc;
            acc *= std::max<int64_t>(d.shape[i], 1);
          }
          d.strides = contiguous;
          torch::from_blob(out_arena->base() + *block, d.shape, d.strides, t.options()).copy_(t);
        }
      } else if (nbytes == 0) {
        d.block = d.offset = 0;
      }
      d.Pack(&w);
    } else if (v.isTuple() || v.isList()) {
      w.Key(v.isTuple() ? "tuple" : "list");
      std::vector<torch::jit::IValue> items = v.isTuple() ? v.toTupleRef().elements().vec() : v.toListRef().vec();
      w.pk().pack_array(static_cast<uint32_t>(items.size()));
      for (const auto& x : items) encode(x, depth + 1);
    } else if (v.isGenericDict()) {
      w.Key("dict");
      auto dict = v.toGenericDict();
      w.pk().pack_array(static_cast<uint32_t>(dict.size()));
      for (const auto& kv : dict) {
        w.pk().pack_array(2);
        if (kv.key().isString()) {
          w.Str(kv.key().toStringRef());
        } else {
          w.Val(kv.key().isInt() ? kv.key().toInt() : int64_t{0});
        }
        encode(kv.value(), depth + 1);
      }
    } else if (v.isDouble()) {
      w.Key("float");
      w.Val(v.toDouble());
    } else {
      w.Key("value");
      if (v.isNone()) {
        w.pk().pack_nil();
      } else if (v.isBool()) {
        w.Val(v.toBool());
      } else if (v.isInt()) {
        w.Val(v.toInt());
      } else if (v.isString()) {
        w.Str(v.toStringRef());
      } else {
        w.pk().pack_nil();
        if (failure.ok()) failure = Status(Code::kModelError, "the model returned a " + v.tagKind() +
                                                                  ", which shoal cannot send back");
      }
    }
  };
  encode(out, 0);
  if (!failure.ok()) {
    for (uint64_t b : allocated) out_arena->Free(b);
    return ErrorReply(id, failure);
  }
  return std::string(w.body());
}

}  // namespace shoal
