#include "shoal/client.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

#include "client/connection.h"
#include "protocol/channel.h"
#include "protocol/client_writer.h"
#include "protocol/descriptor.h"
#include "protocol/frame.h"
#include "protocol/call_tree.h"
#include "protocol/messages.h"
#include "protocol/paths.h"
#include "shm/arena.h"
#include "shm/gpu_memory.h"
#include "tensors/ivalue_output.h"
#include "tensors/tree.h"

namespace shoal {

// Memory ownership (docs/architecture.md): inputs live in arenas this client creates and
// owns (it alone allocates and frees their blocks, bookkeeping in its own memory); results
// live in output arenas a worker made for this connection, whose fds shoald passes with
// the first answer that uses them. A result's block goes back to that worker when the
// last tensor over it goes: the connection's writer (protocol/client_writer.h) sends the
// release at once, from a thread of its own.
namespace {

// One block of an arena, given back when the last tensor over it goes: freed here when
// this client owns the arena, released to its owner when a worker does, and left alone
// when it is a view (`release` null, not owned).
struct BlockRef {
  BlockRef(std::shared_ptr<Arena> a, uint64_t id, uint64_t off, std::shared_ptr<ClientWriter> to = nullptr)
      : arena(std::move(a)), arena_id(id), offset(off), release(std::move(to)) {}
  ~BlockRef() {
    if (release) {
      release->Release(arena_id, offset, arena->device());  // queued; the writer's thread sends it
    } else {
      arena->Free(offset);  // refused (false) when this is not a block of ours
    }
  }
  BlockRef(const BlockRef&) = delete;
  BlockRef& operator=(const BlockRef&) = delete;
  std::shared_ptr<Arena> arena;
  uint64_t arena_id;
  uint64_t offset;
  std::shared_ptr<ClientWriter> release;  // shared with the tensors, which may outlive the Client
};

// The deleter of storages over blocks: also how Infer recognises an arena-backed tensor.
void DeleteBlock(void* ctx) { delete static_cast<std::shared_ptr<BlockRef>*>(ctx); }

std::shared_ptr<BlockRef> BlockOf(const torch::Tensor& t) {
  const auto& dp = t.storage().data_ptr();
  if (dp.get_deleter() != &DeleteBlock) return nullptr;
  return *static_cast<std::shared_ptr<BlockRef>*>(dp.get_context());
}

// A tensor over [data, data + extent) of a block, keeping the block alive.
torch::Tensor TensorOver(const std::shared_ptr<BlockRef>& block, uint64_t data_offset, at::ScalarType type,
                         at::IntArrayRef shape, at::IntArrayRef strides, size_t nbytes) {
  uint8_t* data = block->arena->base() + data_offset;
  auto* ctx = new std::shared_ptr<BlockRef>(block);
  int gpu = block->arena->device();  // a GPU arena: a CUDA tensor over its device memory
  c10::Device device = gpu >= 0 ? c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(gpu)) : c10::Device(c10::kCPU);
  c10::DataPtr dp(data, ctx, &DeleteBlock, device);
  c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(dp), nullptr, false);
  return torch::empty({0}, torch::TensorOptions().dtype(type).device(device)).set_(storage, 0, shape, strides);
}

// The CUDA ordinal of `device`, -1 for the CPU.
Result<int> GpuOrdinal(const torch::Device& device) {
  if (device.is_cpu()) return -1;
  if (!device.is_cuda()) return Status::BadRequest("tensors on " + device.str() + " cannot travel through shoal");
  return device.has_index() ? static_cast<int>(device.index()) : static_cast<int>(c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->getDevice().index());
}

constexpr size_t kGpuArenaSize = 64u << 20;  // a client's GPU arena (more when a tensor needs it)

}  // namespace

using InputBlocks = std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<BlockRef>>;  // by (arena, block)

struct Client::Impl {
  size_t arena_size = 0;
  std::unique_ptr<ClientConnection> conn;  // requests and replies, many in flight (client/connection.h)
  std::mutex alloc_mu;                     // guards arenas; held across the round trip that adds one
  std::map<uint64_t, std::shared_ptr<Arena>> arenas;  // ours: inputs. GUARDED_BY(alloc_mu)

  // Sends one request and waits for its reply (or its error).
  Result<msgpack::object_handle> Call(uint64_t id, const Writer& w, const std::string& op,
                                      const std::vector<int>& fds = {}) {
    std::optional<Result<msgpack::object_handle>> out;
    auto job = conn->Submit(id, w.body(), fds, op + " request " + std::to_string(id), std::nullopt,
                            [&out](Result<msgpack::object_handle> r) { out.emplace(std::move(r)); }, true);
    if (!job.ok()) return job.status();
    conn->Wait(*job);  // returns once the completion ran
    return std::move(*out);
  }

  // An arena on `device` (-1: host memory, else a GPU ordinal). REQUIRES(alloc_mu)
  Result<uint64_t> AddArena(size_t size, int device = -1) {
    auto arena = device < 0 ? Arena::Create("shoal-client", size) : Arena::CreateGpu(device, size);
    if (!arena.ok()) return arena.status();
    uint64_t id = conn->NextId();
    Writer w;
    if (device < 0) {
      BeginRequest(&w, "register_arena", id, 0);
    } else {  // a GPU arena says on which GPU and how large it is: its fd cannot say
      auto bus = GpuBusOfOrdinal(device);
      if (!bus.ok()) return bus.status();
      BeginRequest(&w, "register_arena", id, 2);
      w.Key("gpu"); w.Str(*bus);
      w.Key("size"); w.Val(static_cast<uint64_t>((*arena)->size()));
    }
    auto reply = Call(id, w, "register_arena", {(*arena)->fd()});
    if (!reply.ok()) return reply.status();
    auto aid = MapView(reply->get()).Uint("arena");
    if (!aid.ok()) return aid.status();
    arenas[*aid] = std::shared_ptr<Arena>(std::move(*arena));
    return *aid;
  }

  // A block in one of our arenas on `device` (-1: host memory). REQUIRES(alloc_mu)
  Result<std::shared_ptr<BlockRef>> Alloc(size_t nbytes, int device = -1) {
    for (auto& [id, arena] : arenas) {
      if (arena->device() != device) continue;
      auto off = arena->Allocate(nbytes);
      if (off.ok()) return std::make_shared<BlockRef>(arena, id, *off);
    }
    size_t base = device < 0 ? arena_size : kGpuArenaSize;
    auto id = AddArena(std::max(base, 2 * nbytes + (1u << 20)), device);
    if (!id.ok()) return id.status();
    auto off = arenas[*id]->Allocate(nbytes);
    if (!off.ok()) return off.status();
    return std::make_shared<BlockRef>(arenas[*id], *id, *off);
  }

  // An infer request ready to send: its id, body, the blocks of its inputs, and how long
  // the client waits for its answer.
  struct Request {
    uint64_t id = 0;
    Writer w;
    std::shared_ptr<InputBlocks> inputs;
    std::optional<std::chrono::milliseconds> wait;
    std::string what;
  };
  // `call`: the call's structure (args/kwargs encoded, method), none for model(*inputs).
  struct CallShape {
    std::string args;    // a MessagePack array of nodes; empty: absent
    std::string kwargs;  // a MessagePack array of [name, node]; empty: absent
    std::string method;
  };
  Result<std::unique_ptr<Request>> PrepareInfer(const std::string& model, const std::vector<torch::Tensor>& inputs,
                                                std::optional<std::chrono::milliseconds> timeout, int retries,
                                                bool host_outputs, const CallShape& call = CallShape());
  // Encodes model(*args, **kwargs): `call` gets the structure, `inputs` its tensors in order.
  static Status EncodeCall(const std::vector<c10::IValue>& args, const std::map<std::string, c10::IValue>& kwargs,
                           CallShape* call, std::vector<torch::Tensor>* inputs);
  Result<std::unique_ptr<Request>> PrepareCall(const std::string& model, const std::vector<c10::IValue>& args,
                                               const std::map<std::string, c10::IValue>& kwargs,
                                               const InferOptions& options);
  // What an infer's completion makes of its reply: the outputs over their blocks. On the
  // reading thread (it reads the connection's output arenas).
  Result<c10::IValue> DecodeOutputs(Result<msgpack::object_handle> reply, const InputBlocks& inputs);
  // Submits `r`; `done` gets the decoded outputs, once.
  Status SubmitInfer(std::unique_ptr<Request> r, std::function<void(Result<c10::IValue>)> done, bool attended,
                     std::shared_ptr<ClientConnection::Job>* job);
  // A prepared request sent and waited for (reading its own answer), or sent with a future.
  Result<c10::IValue> Run(Result<std::unique_ptr<Request>> r);
  std::future<Result<c10::IValue>> Start(Result<std::unique_ptr<Request>> r);
};

Client::Client(std::unique_ptr<Impl> impl, std::string path) : impl_(std::move(impl)), socket_path_(std::move(path)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path, size_t arena_size) {
  std::string path = socket_path.empty() ? DefaultSocketPath() : socket_path;
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return Status::FromErrno("socket", errno);
  auto fail = [sock](Status st) -> Status {
    close(sock);
    return st;
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return fail(Status::BadRequest("socket path too long: " + path));
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return fail(Status(Code::kUnavailable, "cannot connect to shoald at " + path + ": " + std::strerror(errno) +
                                               "; is shoald running? (start it with `shoald --socket " + path +
                                               "`)"));
  }
  return Adopt(sock, path, arena_size);
}

Result<std::unique_ptr<Client>> Client::Adopt(int sock, const std::string& path, size_t arena_size) {
  // Nothing is sent (no arena) before we know who listens.
  if (auto st = CheckServerPeer(sock, path); !st.ok()) {
    close(sock);
    return st;
  }
  auto impl = std::make_unique<Impl>();
  impl->arena_size = arena_size;
  impl->conn = std::make_unique<ClientConnection>(sock, path);
  {
    std::lock_guard<std::mutex> lock(impl->alloc_mu);
    auto id = impl->AddArena(arena_size);
    if (!id.ok()) return id.status();
  }
  return std::unique_ptr<Client>(new Client(std::move(impl), path));
}

Status Client::Load(const std::string& name, const std::string& archive_path, const std::string& device) {
  LoadOptions options;
  options.device = device;
  return Load(name, archive_path, options);
}

Status Client::Load(const std::string& name, const std::string& archive_path, const LoadOptions& options) {
  const std::string& device = options.device;
  std::error_code ec;
  auto abs = std::filesystem::absolute(archive_path, ec);
  // Opened here with our own rights; shoald and its workers use this very file.
  int fd = open(abs.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    return Status::BadRequest("cannot read archive " + abs.string() + ": " + std::strerror(errno) +
                              " (the client opens archives with your own rights and passes the open file to shoald)");
  }
  uint64_t id = impl_->conn->NextId();
  Writer w;
  BeginRequest(&w, "load", id,
               2 + !device.empty() + options.max_batch.has_value() + options.max_delay_us.has_value() +
                   options.preferred_batch_sizes.has_value() + !options.entry.empty() + !options.methods.empty());
  w.Key("name"); w.Str(name);
  w.Key("path"); w.Str(abs.string());  // a label for `models`; shoald never opens it
  if (!device.empty()) {
    w.Key("device"); w.Str(device);
  }
  if (options.max_batch) {
    w.Key("max_batch"); w.Val(static_cast<uint64_t>(*options.max_batch));
  }
  if (options.max_delay_us) {
    w.Key("max_delay_us"); w.Val(*options.max_delay_us);
  }
  if (options.preferred_batch_sizes) {
    w.Key("preferred_batch_sizes");
    w.pk().pack_array(static_cast<uint32_t>(options.preferred_batch_sizes->size()));
    for (uint32_t n : *options.preferred_batch_sizes) w.Val(static_cast<uint64_t>(n));
  }
  if (!options.entry.empty()) {
    w.Key("entry"); w.Str(options.entry);
  }
  if (!options.methods.empty()) {
    w.Key("methods");
    w.pk().pack_array(static_cast<uint32_t>(options.methods.size()));
    for (const auto& m : options.methods) w.Str(m);
  }
  auto st = impl_->Call(id, w, "load", {fd}).status();
  close(fd);
  return st;
}

Status Client::Unload(const std::string& name) {
  uint64_t id = impl_->conn->NextId();
  Writer w;
  BeginRequest(&w, "unload", id, 1);
  w.Key("name"); w.Str(name);
  return impl_->Call(id, w, "unload").status();
}

Result<std::vector<ModelInfo>> Client::Models() {
  uint64_t id = impl_->conn->NextId();
  Writer w;
  BeginRequest(&w, "models", id, 0);
  auto reply = impl_->Call(id, w, "models");
  if (!reply.ok()) return reply.status();
  auto arr = MapView(reply->get()).Array("models");
  if (!arr.ok()) return arr.status();
  std::vector<ModelInfo> out;
  for (uint32_t i = 0; i < (*arr)->via.array.size; ++i) {
    MapView m((*arr)->via.array.ptr[i]);
    ModelInfo info;
    if (auto n = m.Str("name"); n.ok()) info.name = *n;
    if (auto p = m.Str("path"); p.ok()) info.path = *p;
    if (auto r = m.Bool("ready"); r.ok()) info.ready = *r;
    if (auto e = m.Str("engine"); e.ok()) info.engine = *e;
    if (auto d = m.Str("device"); d.ok()) info.device = *d;
    if (auto e = m.OptStr("entry"); e.ok() && e->has_value()) info.entry = **e;
    if (const msgpack::object* ms = m.Find("methods"); ms != nullptr && ms->type == msgpack::type::ARRAY) {
      for (uint32_t k = 0; k < ms->via.array.size; ++k) {
        const auto& n = ms->via.array.ptr[k];
        if (n.type == msgpack::type::STR) info.methods.emplace_back(n.via.str.ptr, n.via.str.size);
      }
    }
    for (auto* specs : {&info.inputs, &info.outputs}) {
      const msgpack::object* a = m.Find(specs == &info.inputs ? "inputs" : "outputs");
      if (a == nullptr || a->type != msgpack::type::ARRAY) continue;
      for (uint32_t k = 0; k < a->via.array.size; ++k) {
        MapView s(a->via.array.ptr[k]);
        ModelInfo::Tensor t;
        t.name = s.Str("name").value_or("");
        t.dtype = s.Str("dtype").value_or("");
        if (auto shape = s.Array("shape"); shape.ok()) {
          for (uint32_t d = 0; d < (*shape)->via.array.size; ++d) {
            const auto& n = (*shape)->via.array.ptr[d];
            t.shape.push_back(n.type == msgpack::type::POSITIVE_INTEGER ? static_cast<int64_t>(n.via.u64) : -1);
          }
        }
        specs->push_back(std::move(t));
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

Result<std::string> Client::StatusText() {
  uint64_t id = impl_->conn->NextId();
  Writer w;
  BeginRequest(&w, "status", id, 0);
  auto reply = impl_->Call(id, w, "status");
  if (!reply.ok()) return reply.status();
  std::ostringstream os;
  os << reply->get();
  return os.str();
}

Result<HealthInfo> Client::Health() {
  uint64_t id = impl_->conn->NextId();
  Writer w;
  BeginRequest(&w, "health", id, 0);
  auto reply = impl_->Call(id, w, "health");
  if (!reply.ok()) return reply.status();
  MapView m(reply->get());
  HealthInfo h;
  h.live = m.Bool("live").ok() && *m.Bool("live");
  h.ready = m.Bool("ready").ok() && *m.Bool("ready");
  h.stopping = m.Bool("stopping").ok() && *m.Bool("stopping");
  if (const auto* models = m.Find("models"); models != nullptr && models->type == msgpack::type::MAP) {
    for (uint32_t i = 0; i < models->via.map.size; ++i) {
      const auto& kv = models->via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR && kv.val.type == msgpack::type::BOOLEAN) {
        h.models[std::string(kv.key.via.str.ptr, kv.key.via.str.size)] = kv.val.via.boolean;
      }
    }
  }
  return h;
}

Result<torch::Tensor> Client::Empty(at::IntArrayRef shape, at::ScalarType dtype, torch::Device device) {
  if (DTypeName(dtype).empty()) return Status::BadRequest("dtype cannot travel through shoal");
  auto ordinal = GpuOrdinal(device);
  if (!ordinal.ok()) return ordinal.status();
  int64_t numel = 1;
  for (auto s : shape) {
    if (s < 0) return Status::BadRequest("negative dimension");
    numel *= s;
  }
  size_t nbytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  std::lock_guard<std::mutex> lock(impl_->alloc_mu);
  auto block = impl_->Alloc(std::max<size_t>(nbytes, 1), *ordinal);
  if (!block.ok()) return block.status();
  return TensorOver(*block, (*block)->offset, dtype, shape, ContiguousStrides(shape.vec()), nbytes);
}

Result<std::unique_ptr<Client::Impl::Request>> Client::Impl::PrepareInfer(
    const std::string& model, const std::vector<torch::Tensor>& inputs, std::optional<std::chrono::milliseconds> timeout,
    int retries, bool host_outputs, const CallShape& call) {
  auto r = std::make_unique<Request>();
  r->inputs = std::make_shared<InputBlocks>();
  std::vector<Descriptor> descs;
  std::set<int> gpus;  // GPU ordinals of the inputs
  for (size_t i = 0; i < inputs.size(); ++i) {
    const torch::Tensor& x = inputs[i];
    if (!x.defined()) return Status::BadRequest("input " + std::to_string(i) + " is an undefined tensor");
    auto ordinal = GpuOrdinal(x.device());
    if (!ordinal.ok()) return Status::BadRequest("input " + std::to_string(i) + ": " + ordinal.status().message());
    if (*ordinal >= 0) gpus.insert(*ordinal);
    std::string dtype = DTypeName(x.scalar_type());
    if (dtype.empty()) return Status::BadRequest("input " + std::to_string(i) + " has an unsupported dtype");
    Descriptor d;
    d.dtype = dtype;
    d.shape = x.sizes().vec();
    // A lazily conjugated or negated view (torch's conj/neg bits) is not its bytes: copied.
    auto block = x.numel() > 0 && !x.is_conj() && !x.is_neg() ? BlockOf(x) : nullptr;
    std::unique_lock<std::mutex> lock(alloc_mu);
    if (block && arenas.count(block->arena_id) != 0 && block->arena->device() == *ordinal) {
      lock.unlock();
      // Arena-backed: describe the bytes where they are.
      d.arena = block->arena_id;
      d.block = block->offset;
      d.offset = static_cast<uint64_t>(static_cast<uint8_t*>(x.data_ptr()) - block->arena->base());
      d.strides = x.strides().vec();
    } else {
      size_t nbytes = static_cast<size_t>(x.numel()) * x.element_size();
      auto b = Alloc(std::max<size_t>(nbytes, 1), *ordinal);
      lock.unlock();
      if (!b.ok()) return b.status();
      block = *b;  // a CUDA tensor: one copy on its GPU below
      d.arena = block->arena_id;
      d.block = d.offset = block->offset;
      d.strides = ContiguousStrides(x.sizes().vec());
      if (nbytes > 0) {
        TensorOver(block, block->offset, x.scalar_type(), x.sizes(), d.strides, nbytes).copy_(x);
      }
    }
    (*r->inputs)[{d.arena, d.block}] = block;
    descs.push_back(std::move(d));
  }
  // The writes to GPU inputs (the caller's kernels, our copies) are complete before the
  // worker, another process, reads them.
  for (int g : gpus) torch::cuda::synchronize(g);
  r->id = conn->NextId();
  r->what = "infer request " + std::to_string(r->id) + " (model '" + model + "')";
  Writer& w = r->w;
  BeginRequest(&w, "infer", r->id,
               2 + (timeout ? 1 : 0) + (retries > 0 ? 1 : 0) + (host_outputs ? 1 : 0) + (call.args.empty() ? 0 : 1) +
                   (call.kwargs.empty() ? 0 : 1) + (call.method.empty() ? 0 : 1));
  if (host_outputs) {
    w.Key("outputs"); w.Str("cpu");
  }
  if (!call.args.empty()) {
    w.Key("args"); PackEncoded(&w, call.args);
  }
  if (!call.kwargs.empty()) {
    w.Key("kwargs"); PackEncoded(&w, call.kwargs);
  }
  if (!call.method.empty()) {
    w.Key("method"); w.Str(call.method);
  }
  w.Key("model"); w.Str(model);
  w.Key("inputs");
  w.pk().pack_array(static_cast<uint32_t>(descs.size()));
  for (const auto& d : descs) d.Pack(&w);
  if (timeout) {
    w.Key("timeout_ms");
    w.Val(static_cast<uint64_t>(std::max<int64_t>(1, timeout->count())));
  }
  if (retries > 0) {
    w.Key("retries");
    w.Val(static_cast<uint64_t>(retries));
  }
  if (timeout) r->wait = *timeout * (1 + std::max(retries, 0)) + ClientConnection::kAnswerMargin;
  return r;
}

Status Client::Impl::EncodeCall(const std::vector<c10::IValue>& args, const std::map<std::string, c10::IValue>& kwargs,
                                CallShape* call, std::vector<torch::Tensor>* inputs) {
  // The one tree encoder (protocol/output_tree.h), with each tensor one of the inputs.
  CallTensorFn tensor = [inputs](OutputValue& v) -> Result<uint64_t> {
    inputs->push_back(static_cast<IValueOutput&>(v).value().toTensor());
    return inputs->size() - 1;
  };
  auto node = [&](const c10::IValue& value, const std::string& where) -> Result<std::string> {
    IValueOutput root(value);
    auto encoded = EncodeCallNode(root, tensor);
    if (!encoded.ok()) return Status(encoded.status().code(), where + ": " + encoded.status().message());
    return encoded;
  };
  Writer a;
  a.pk().pack_array(static_cast<uint32_t>(args.size()));
  for (size_t i = 0; i < args.size(); ++i) {
    auto n = node(args[i], "args[" + std::to_string(i) + "]");
    if (!n.ok()) return n.status();
    PackEncoded(&a, *n);
  }
  call->args = std::string(a.body());
  if (kwargs.empty()) return Status::Ok();
  Writer k;
  k.pk().pack_array(static_cast<uint32_t>(kwargs.size()));
  for (const auto& [name, value] : kwargs) {
    if (!IsIdentifier(name)) return Status::BadRequest("keyword argument '" + name + "' is not an identifier");
    auto n = node(value, "kwargs[\"" + name + "\"]");
    if (!n.ok()) return n.status();
    k.pk().pack_array(2);
    k.Str(name);
    PackEncoded(&k, *n);
  }
  call->kwargs = std::string(k.body());
  return Status::Ok();
}

Result<std::unique_ptr<Client::Impl::Request>> Client::Impl::PrepareCall(
    const std::string& model, const std::vector<c10::IValue>& args, const std::map<std::string, c10::IValue>& kwargs,
    const InferOptions& options) {
  CallShape call;
  call.method = options.method;
  std::vector<torch::Tensor> inputs;
  if (auto st = EncodeCall(args, kwargs, &call, &inputs); !st.ok()) return st;
  return PrepareInfer(model, inputs, options.timeout, options.retries, options.host_outputs, call);
}

Result<c10::IValue> Client::Impl::DecodeOutputs(Result<msgpack::object_handle> reply, const InputBlocks& inputs) {
  if (!reply.ok()) return reply.status();
  const msgpack::object* outputs = MapView(reply->get()).Find("outputs");
  if (outputs == nullptr) return Status::Internal("reply without outputs");
  // One BlockRef per block of this answer: released once, when the last tensor over it goes.
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<BlockRef>> blocks;
  const auto& out_arenas = conn->out_arenas();
  auto make = [&](const Descriptor& d) -> Result<torch::Tensor> {
    auto type = ScalarTypeOf(d.dtype);
    auto extent = d.Extent();
    if (!type || !extent.ok()) return Status::Internal("bad output descriptor");
    if (*extent == 0) {  // no bytes, no block; on the GPU it was on (by bus id), if any
      auto options = torch::TensorOptions().dtype(*type);
      if (!d.gpu.empty()) {
        auto ordinal = GpuOrdinalOfBus(d.gpu);
        if (!ordinal.ok()) return Status::Internal("empty output on GPU " + d.gpu + ": " + ordinal.status().message());
        options = options.device(torch::kCUDA, static_cast<c10::DeviceIndex>(*ordinal));
      }
      return torch::empty(d.shape, options);
    }
    auto& block = blocks[{d.arena, d.block}];
    if (!block) {
      if (auto in = inputs.find({d.arena, d.block}); in != inputs.end()) {
        block = in->second;  // an input returned in place: its block stays ours
      } else if (auto out = out_arenas.find(d.arena); out != out_arenas.end()) {
        if (auto st = d.CheckBounds(out->second->size()); !st.ok()) return Status::Internal(st.message());
        // A block the worker allocated for this result: released to it when the last tensor goes.
        block = std::make_shared<BlockRef>(out->second, d.arena, d.block, conn->writer());
      } else {
        return Status::Internal("output in an unknown arena " + std::to_string(d.arena));
      }
    }
    if (auto st = d.CheckBounds(block->arena->size()); !st.ok()) return Status::Internal(st.message());
    return TensorOver(block, d.offset, *type, d.shape, d.strides, *extent);
  };
  return DecodeTree(*outputs, make);
}

Status Client::Impl::SubmitInfer(std::unique_ptr<Request> r, std::function<void(Result<c10::IValue>)> done,
                                 bool attended, std::shared_ptr<ClientConnection::Job>* job) {
  auto inputs = r->inputs;
  auto submitted = conn->Submit(
      r->id, r->w.body(), {}, std::move(r->what), r->wait,
      [this, inputs, done = std::move(done)](Result<msgpack::object_handle> reply) {
        done(DecodeOutputs(std::move(reply), *inputs));
      },
      attended, inputs);
  if (!submitted.ok()) return submitted.status();
  *job = std::move(*submitted);
  return Status::Ok();
}

Result<c10::IValue> Client::Infer(const std::string& model, const std::vector<torch::Tensor>& inputs,
                                  std::optional<std::chrono::milliseconds> timeout, int retries, bool host_outputs) {
  return impl_->Run(impl_->PrepareInfer(model, inputs, timeout, retries, host_outputs));
}

Result<c10::IValue> Client::Infer(const std::string& model, const std::vector<c10::IValue>& args,
                                  const std::map<std::string, c10::IValue>& kwargs, const InferOptions& options) {
  return impl_->Run(impl_->PrepareCall(model, args, kwargs, options));
}

std::future<Result<c10::IValue>> Client::InferAsync(const std::string& model, const std::vector<c10::IValue>& args,
                                                    const std::map<std::string, c10::IValue>& kwargs,
                                                    const InferOptions& options) {
  return impl_->Start(impl_->PrepareCall(model, args, kwargs, options));
}

Result<c10::IValue> Client::Impl::Run(Result<std::unique_ptr<Request>> r) {
  if (!r.ok()) return r.status();
  std::optional<Result<c10::IValue>> out;
  std::shared_ptr<ClientConnection::Job> job;
  if (auto st = SubmitInfer(std::move(*r), [&out](Result<c10::IValue> v) { out.emplace(std::move(v)); }, true, &job);
      !st.ok()) {
    return st;
  }
  conn->Wait(job);  // returns once the completion ran
  return std::move(*out);
}

std::future<Result<c10::IValue>> Client::InferAsync(const std::string& model, const std::vector<torch::Tensor>& inputs,
                                                    std::optional<std::chrono::milliseconds> timeout, int retries,
                                                    bool host_outputs) {
  return impl_->Start(impl_->PrepareInfer(model, inputs, timeout, retries, host_outputs));
}

std::future<Result<c10::IValue>> Client::Impl::Start(Result<std::unique_ptr<Request>> r) {
  auto promise = std::make_shared<std::promise<Result<c10::IValue>>>();
  auto future = promise->get_future();
  std::shared_ptr<ClientConnection::Job> job;
  Status st = r.ok() ? SubmitInfer(std::move(*r),
                                          [promise](Result<c10::IValue> v) { promise->set_value(std::move(v)); },
                                          false, &job)
                     : r.status();
  if (!st.ok()) promise->set_value(st);  // (the completion never runs then)
  return future;
}

}  // namespace shoal
