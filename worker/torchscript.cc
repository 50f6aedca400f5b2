#include "worker/torchscript.h"

#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <torch/cuda.h>
#include <torch/script.h>
#include <unistd.h>

#include <cerrno>

#include <mutex>
#include <set>
#include <shared_mutex>

#include "package_format/archive_reader.h"
#include "protocol/descriptor.h"
#include "protocol/output_tree.h"
#include "shm/client_arena_maps.h"
#include "shm/gpu_memory.h"
#include "tensors/cuda_context.h"
#include "tensors/ivalue_output.h"
#include "tensors/tree.h"
#include "worker/shared_weights.h"

namespace shoal {

namespace {

// libtorch reads the archive through this: positioned reads of the open file shoald sent
// (pread: no shared offset with the other interpreters' copies of the descriptor).
class FdReadAdapter : public caffe2::serialize::ReadAdapterInterface {
 public:
  FdReadAdapter(int fd, size_t size) : fd_(fd), size_(size) {}
  size_t size() const override { return size_; }
  size_t read(uint64_t pos, void* buf, size_t n, const char* = "") const override {
    size_t done = 0;
    while (done < n) {
      ssize_t r = pread(fd_, static_cast<char*>(buf) + done, n - done, static_cast<off_t>(pos + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }

 private:
  int fd_;
  size_t size_;
};

// `gpu_weights`: the size of the shared copy this load uploaded (its fd goes along).
std::string OkReply(uint64_t id, const std::string& engine = "", const std::string& device = "",
                    uint64_t gpu_weights = 0) {
  Writer w;
  BeginReply(&w, id, (engine.empty() ? 0 : 2) + (gpu_weights ? 1 : 0));
  if (!engine.empty()) {
    w.Key("engine"); w.Str(engine);
    w.Key("device"); w.Str(device);
  }
  if (gpu_weights) { w.Key("gpu_weights"); w.Val(gpu_weights); }
  return std::string(w.body());
}

// A CUDA error that leaves the process's context unusable (sticky: a synchronise fails
// after it): the job is answered and shoald replaces the worker ("poisoned").

std::string PoisonedReply(uint64_t id, const Status& st, std::string_view traceback = {}) {
  return ErrorReply(id, Status(st.code(), st.message() + "; its worker's CUDA context is unusable now, the worker "
                                                         "is replaced"),
                    traceback, 0, /*poisoned=*/true);
}

// The quantized engine a manifest names ("" : none); BAD_REQUEST naming the engines this
// torch has when it has no such engine. Engines are process-wide: set before the load (packed
// weights are made for the engine current then) and before each job of the model.
Result<std::optional<at::QEngine>> QEngineNamed(const std::string& name, const std::string& path) {
  if (name.empty()) return std::optional<at::QEngine>();
  std::string have;
  for (at::QEngine e : at::globalContext().supportedQEngines()) {
    if (e == at::QEngine::NoQEngine) continue;
    std::string n = c10::toString(e);
    for (auto& c : n) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
    if (n == name) return std::optional<at::QEngine>(e);
    have += (have.empty() ? "" : ", ") + n;
  }
  return Status::BadRequest("TorchScript archive " + path + ": the model needs quantized engine '" + name +
                            "', which this worker's torch does not have (it has " + (have.empty() ? "none" : have) +
                            "); save it with one of those (shoal.torchscript_manifest(quantized_engine=...))");
}

void UseQEngine(const std::optional<at::QEngine>& e) {
  if (e && at::globalContext().qEngine() != *e) at::globalContext().setQEngine(*e);
}

// What a TorchScript model's exception says, as a user reads it: the model's own error
// (the last line of TorchScript's report, "builtins.ValueError: ..."), with the report
// itself (TorchScript's tracebacks) as the reply's traceback. libtorch's C++ frames
// ("Exception raised from ...", kilobytes with torch 2.x) are left out of both.
std::string ModelErrorText(const std::exception& e, std::string* traceback) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error != nullptr ? c10_error->what_without_backtrace() : e.what();
  if (auto cpp = text.find("\nException raised from "); cpp != std::string::npos) text.erase(cpp);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.find("Traceback of TorchScript") == std::string::npos) return text;
  *traceback = text;
  auto last = text.rfind('\n');
  return last == std::string::npos ? text : text.substr(last + 1);
}

// Where a TorchScript archive's tensors go for `device` ("auto": where they were saved).
Result<torch::Device> TargetDevice(const std::shared_ptr<FdReadAdapter>& file, const std::string& path,
                                   const std::string& device) {
  bool cuda = device.rfind("cuda", 0) == 0;
  if (device == "auto") {
    caffe2::serialize::PyTorchStreamReader reader(file);
    auto [data, size] = reader.getRecord("data.pkl");
    cuda = PickleNamesCuda(std::string_view(static_cast<const char*>(data.get()), size));
  }
  if (!cuda) return torch::Device(torch::kCPU);
  if (!torch::cuda::is_available()) {
    return Status(Code::kUnavailable, "TorchScript archive " + path +
                                          " holds CUDA tensors but this worker has no usable GPU (shoald --gpus, "
                                          "CUDA_VISIBLE_DEVICES, the driver); to serve it on the CPU on purpose, "
                                          "load it with device='cpu' (shoal load --device cpu)");
  }
  return torch::Device(torch::kCUDA, 0);  // a worker sees one GPU (shoald sets CUDA_VISIBLE_DEVICES)
}

}  // namespace

struct TorchScriptModels::Impl {
  // Exclusive for loads, unloads and arena changes; shared while jobs run (several
  // interpreter threads may run TorchScript jobs at once: Module::forward is reentrant).
  std::shared_mutex mu;
  std::mutex map_mu;  // output arenas, made lazily under a shared `mu`
  std::map<std::string, torch::jit::Module> models;
  std::map<std::string, std::optional<at::QEngine>> engines;  // by model: the quantized engine its manifest names
  std::map<std::string, std::unique_ptr<SharedModuleWeights>> shared;  // by model: its GPU copy's fd
  // Client arenas, mapped here only when a TorchScript job first needs them (the Python
  // runner maps them too; mapping every arena twice would double the address space);
  // idle ones are unmapped when a mapping fails, as in the Python runner.
  ClientArenaMaps arenas;
  std::map<uint32_t, std::unique_ptr<OutputArenas>> outputs;  // by lane; GUARDED_BY(map_mu)

  OutputArenas* Outputs(uint32_t lane) {
    std::lock_guard<std::mutex> lock(map_mu);
    auto& o = outputs[lane];
    if (!o) o = std::make_unique<OutputArenas>(OutputOwnerTag(lane, true));
    return o.get();
  }
};

TorchScriptModels::TorchScriptModels() : impl_(std::make_unique<Impl>()) {}
TorchScriptModels::~TorchScriptModels() = default;

bool TorchScriptModels::Handle(const MapView& msg, std::vector<int>* fds, EncodedReply* reply) {
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
    if (id.ok() && !fds->empty()) {
      impl_->arenas.Add(*id, fcntl(fds->front(), F_DUPFD_CLOEXEC, 0), msg.OptUint("size").value_or(std::nullopt).value_or(0),
                        msg.OptStr("gpu").value_or(std::nullopt).value_or(""));
    }
    return false;  // the Python runner maps it too
  }
  if (*op == "drop_arena") {
    if (auto id = msg.Uint("arena"); id.ok()) impl_->arenas.Drop(*id);
    return false;
  }
  auto id = msg.Uint("id");
  if (!id.ok()) return false;
  if (*op == "load") {  // the archive is the file sent with the message; `path` only names it
    auto name = msg.Str("name");
    std::string label = msg.OptStr("path").value_or(std::nullopt).value_or("");
    if (!name.ok() || fds->empty()) return false;
    auto info = InspectArchiveFd(fds->front(), label, msg.OptStr("entry").value_or(std::nullopt).value_or(""));
    if (!info.ok() || info->kind != ArchiveKind::kTorchScript) return false;  // the Python runner's
    int fd = fds->front();
    fds->erase(fds->begin());
    // Shared GPU weights (worker/shared_weights.h): "upload", or the copy's size with its fd.
    Share share;
    if (auto bytes = msg.OptUint("gpu_weights").value_or(std::nullopt); bytes.has_value() && !fds->empty()) {
      share.map_fd = fds->front();
      share.size = *bytes;
      fds->erase(fds->begin());
    } else {
      share.upload = msg.OptStr("gpu_weights").value_or(std::nullopt).value_or("") == "upload";
    }
    *reply = Load(*id, *name, fd, label, msg.OptStr("device").value_or(std::nullopt).value_or("auto"),
                  info->policy.quantized_engine, share);
    if (share.map_fd >= 0) close(share.map_fd);  // still ours unless the load mapped it
    close(fd);
    return true;
  }
  auto model = msg.Str(*op == "unload" ? "name" : "model");
  if (!model.ok() || impl_->models.count(*model) == 0) return false;
  if (*op == "unload") {
    impl_->models.erase(*model);
    impl_->engines.erase(*model);
    impl_->shared.erase(*model);  // the mapping goes with the module's last tensor
    reply->body = OkReply(*id);
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

std::string TorchScriptModels::Release(uint64_t arena, const std::vector<uint64_t>& blocks, bool notice) {
  if (!IsWorkerArena(arena) || OwnerOfWorkerArena(arena) % 2 != 1) return "";
  OutputArenas* out = impl_->Outputs(OwnerOfWorkerArena(arena) / 2);
  for (uint64_t b : blocks) out->Free(arena, b);  // ignores what it did not hand out
  return notice ? UsageNotice(out->Usage()) : "";
}

std::vector<std::string> TorchScriptModels::DropClient(uint64_t client) {
  std::vector<OutputArenas*> owners;
  {
    std::lock_guard<std::mutex> lock(impl_->map_mu);
    for (auto& [lane, o] : impl_->outputs) owners.push_back(o.get());
  }
  std::vector<std::string> notices;
  for (OutputArenas* o : owners) {
    o->DropClient(client);
    notices.push_back(UsageNotice(o->Usage()));
  }
  return notices;
}

EncodedReply TorchScriptModels::Load(uint64_t id, const std::string& name, int fd, const std::string& path,
                                     const std::string& device, const std::string& quantized_engine, Share& share) {
  struct stat st;
  if (fstat(fd, &st) != 0) {
    return {ErrorReply(id, Status::FromErrno("model '" + name + "': TorchScript archive " + path, errno)), {}};
  }
  auto file = std::make_shared<FdReadAdapter>(fd, static_cast<size_t>(st.st_size));
  std::string where;
  try {
    auto engine = QEngineNamed(quantized_engine, path);
    if (!engine.ok()) return {ErrorReply(id, Status(engine.status().code(), "model '" + name + "': " +
                                                                            engine.status().message())), {}};
    UseQEngine(*engine);
    auto target = TargetDevice(file, path, device);
    if (!target.ok()) {
      return {ErrorReply(id, Status(target.status().code(), "model '" + name + "': " + target.status().message())), {}};
    }
    // Shared weights: loaded on the CPU, then every tensor goes onto the GPU's one copy.
    const bool sharing = target->is_cuda() && (share.upload || share.map_fd >= 0);
    torch::jit::Module m = torch::jit::load(file, sharing ? torch::Device(torch::kCPU) : *target);
    std::unique_ptr<SharedModuleWeights> shared;
    if (sharing) {
      int map_fd = share.map_fd;
      share.map_fd = -1;  // Share takes it
      auto s = SharedModuleWeights::Share(&m, share.upload, map_fd, share.size);
      if (!s.ok()) {
        return {ErrorReply(id, Status(s.status().code(), "model '" + name + "': sharing its GPU weights: " +
                                                             s.status().message())), {}};
      }
      shared = std::move(*s);
    }
    m.eval();
    if (target->is_cuda()) torch::cuda::synchronize();
    where = target->is_cuda() ? "cuda" : "cpu";
    impl_->models[name] = std::move(m);
    impl_->engines[name] = *engine;
    impl_->shared.erase(name);
    if (shared) {
      EncodedReply out{OkReply(id, "libtorch", where, share.upload ? shared->size() : 0), {}};
      if (share.upload) out.fds.push_back(shared->export_fd());  // shoald holds it from now on
      impl_->shared[name] = std::move(shared);
      return out;
    }
  } catch (const std::exception& e) {
    Status st(Code::kModelError, "model '" + name + "': TorchScript archive " + path + " does not load: " + e.what());
    if (CudaContextInUse()) {
      try {
        torch::cuda::synchronize();
      } catch (const std::exception&) {
        return {PoisonedReply(id, st), {}};
      }
    }
    return {ErrorReply(id, st), {}};
  }
  return {OkReply(id, "libtorch", where), {}};
}

namespace {

// `v` typed as the signature says where the wire could not tell: an empty list or dict, or
// one whose items unify to no single type (built as List[Any]: the schema's check would
// refuse it). Containers are rebuilt with the schema's element types; anything else is
// left for the schema's own check.
c10::IValue Retype(c10::IValue v, const c10::TypePtr& want) {
  c10::TypePtr t = want;
  if (auto opt = t->cast<c10::OptionalType>()) {
    if (v.isNone()) return v;
    t = opt->getElementType();
  }
  if (auto list_type = t->cast<c10::ListType>(); list_type && v.isList()) {
    c10::impl::GenericList out(list_type->getElementType());
    for (const auto& item : v.toListRef()) out.push_back(Retype(item, list_type->getElementType()));
    return out;
  }
  if (auto dict_type = t->cast<c10::DictType>(); dict_type && v.isGenericDict()) {
    c10::impl::GenericDict out(dict_type->getKeyType(), dict_type->getValueType());
    for (const auto& e : v.toGenericDict()) out.insert(e.key(), Retype(e.value(), dict_type->getValueType()));
    return out;
  }
  if (auto tuple_type = t->cast<c10::TupleType>(); tuple_type && v.isTuple() &&
                                                   tuple_type->elements().size() == v.toTupleRef().elements().size()) {
    std::vector<c10::IValue> items;
    for (size_t i = 0; i < tuple_type->elements().size(); ++i) {
      items.push_back(Retype(v.toTupleRef().elements()[i], tuple_type->elements()[i]));
    }
    if (tuple_type->schema()) return c10::ivalue::Tuple::createNamed(std::move(items), tuple_type);
    return c10::ivalue::Tuple::create(std::move(items));
  }
  return v;
}

// The arguments of a structured call (docs/protocol.md, "Call structure"; shoald checked
// its grammar and references): `*args` holds the job's input tensors in, the call's
// positional arguments out. A keyword the method's schema does not name is BAD_REQUEST here,
// rather than libtorch's error from deep inside the call.
Status BuildCall(const MapView& msg, const c10::FunctionSchema& schema, std::vector<torch::jit::IValue>* args,
                 torch::jit::Kwargs* kwargs) {
  std::vector<torch::jit::IValue> inputs = std::move(*args);
  args->clear();
  if (const auto* a = msg.Find("args"); a != nullptr && a->type == msgpack::type::ARRAY) {
    TreePath root{nullptr, "args"};
    for (uint32_t i = 0; i < a->via.array.size; ++i) {
      TreePath at{&root, {}, nullptr, i};
      auto v = DecodeCallNode(a->via.array.ptr[i], inputs, at);
      if (!v.ok()) return v.status();
      if (i + 1 < schema.arguments().size()) *v = Retype(std::move(*v), schema.arguments()[i + 1].type());  // 0: self
      args->push_back(std::move(*v));
    }
  }
  const auto* kw = msg.Find("kwargs");
  if (kw == nullptr || kw->type != msgpack::type::ARRAY) return Status::Ok();
  std::string known;
  for (size_t i = 1; i < schema.arguments().size(); ++i) {  // 0 is self
    known += (known.empty() ? "" : ", ") + schema.arguments()[i].name();
  }
  TreePath root{nullptr, "kwargs"};
  for (uint32_t i = 0; i < kw->via.array.size; ++i) {
    const auto& pair = kw->via.array.ptr[i];
    if (pair.type != msgpack::type::ARRAY || pair.via.array.size != 2 || pair.via.array.ptr[0].type != msgpack::type::STR) {
      return Status::Internal("malformed kwargs");
    }
    std::string key(pair.via.array.ptr[0].via.str.ptr, pair.via.array.ptr[0].via.str.size);
    auto index = schema.argumentIndexWithName(key);
    if (key == "self" || !index) {
      return Status::BadRequest(schema.name() + "() has no argument named '" + key + "' (it takes " +
                                (known.empty() ? "none" : known) + ")");
    }
    TreePath at{&root, {}, &pair.via.array.ptr[0], i};
    auto v = DecodeCallNode(pair.via.array.ptr[1], inputs, at);
    if (!v.ok()) return v.status();
    (*kwargs)[key] = Retype(std::move(*v), schema.arguments()[*index].type());
  }
  return Status::Ok();
}

}  // namespace

EncodedReply TorchScriptModels::Infer(uint64_t id, const MapView& msg) {
  auto fail = [id](const Status& st) { return EncodedReply{ErrorReply(id, st), {}}; };
  auto name = *msg.Str("model");
  auto client = msg.Uint("client");
  auto inputs = msg.Array("inputs");
  if (!client.ok() || !inputs.ok()) return fail(Status::Internal("malformed infer message"));
  std::vector<Descriptor> descs;
  std::set<uint64_t> needed;
  for (uint32_t i = 0; i < (*inputs)->via.array.size; ++i) {
    auto d = Descriptor::Parse((*inputs)->via.array.ptr[i]);
    if (!d.ok()) return fail(Status::Internal("input " + std::to_string(i) + ": " + d.status().message()));
    needed.insert(d->arena);
    descs.push_back(std::move(*d));
  }
  std::vector<torch::jit::IValue> args;
  std::vector<InputSpan> spans;
  for (size_t i = 0; i < descs.size(); ++i) {
    const Descriptor& d = descs[i];
    auto a = impl_->arenas.Map(d.arena, needed);
    if (!a.ok()) {
      return fail(Status(a.status().code(), "model '" + name + "', job " + std::to_string(id) + ": input " +
                                                std::to_string(i) + ": " + a.status().message()));
    }
    auto extent = *d.Extent();
    auto type = *ScalarTypeOf(d.dtype);
    auto options = torch::TensorOptions().dtype(type);
    if ((*a)->device() >= 0) options = options.device(torch::kCUDA, (*a)->device());
    uint8_t* base = (*a)->base();
    // The tensor holds the mapping: it stays valid if its arena is dropped meanwhile.
    args.emplace_back(torch::from_blob(base + d.offset, d.shape, d.strides, [keep = *a](void*) {}, options));
    spans.push_back({d.arena, d.block, d.offset, d.offset + extent, base});
  }
  torch::jit::Kwargs kwargs;
  std::string method_name = msg.OptStr("method").value_or(std::nullopt).value_or("forward");
  auto method = impl_->models.at(name).find_method(method_name);
  if (!method) {
    return fail(Status::BadRequest("model '" + name + "', job " + std::to_string(id) + ": the TorchScript module has no method '" +
                                   method_name + "'"));
  }
  if (msg.Find("args") != nullptr || msg.Find("kwargs") != nullptr) {
    auto st = BuildCall(msg, method->function().getSchema(), &args, &kwargs);
    if (!st.ok()) return fail(Status(st.code(), "model '" + name + "', job " + std::to_string(id) + ": " + st.message()));
  }
  torch::jit::IValue out;
  try {
    c10::InferenceMode guard;
    if (auto e = impl_->engines.find(name); e != impl_->engines.end()) UseQEngine(e->second);
    out = (*method)(std::move(args), kwargs);
  } catch (const std::exception& e) {
    std::string tb;
    Status st(Code::kModelError, "model '" + name + "' raised in job " + std::to_string(id) + ": " +
                                     ModelErrorText(e, &tb));
    // Its queued GPU work is waited for; a context that cannot be synchronised is dead.
    if (CudaContextInUse()) {
      try {
        torch::cuda::synchronize();
      } catch (const std::exception&) {
        return EncodedReply{PoisonedReply(id, st, tb), {}};
      }
    }
    return EncodedReply{ErrorReply(id, st, tb), {}};
  }
  // The one output encoder (protocol/output_tree.h), as for Python models.
  OutputPlacement place;
  place.outputs = impl_->Outputs(static_cast<uint32_t>(msg.OptUint("interp").value_or(std::nullopt).value_or(0)));
  place.client = *client;
  place.limits = OutputLimitsOf(msg);
  place.inputs = std::move(spans);
  place.keep_gpu = KeepGpuOutputs(msg);
  IValueOutput root(std::move(out));
  auto reply = EncodeOutputReply(id, name, root, place);
  try {
    // The worker's GPU work is complete before the reply leaves (docs/architecture.md, "GPU").
    if (CudaContextInUse()) torch::cuda::synchronize();
  } catch (const std::exception& e) {
    return EncodedReply{PoisonedReply(id, Status(Code::kModelError, "model '" + name + "', job " +
                                                                        std::to_string(id) + ": " + e.what())),
                        {}};
  }
  if (!reply.ok()) return fail(reply.status());
  return std::move(*reply);
}

}  // namespace shoal
