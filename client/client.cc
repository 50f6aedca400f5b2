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

#include "protocol/channel.h"
#include "protocol/client_writer.h"
#include "protocol/descriptor.h"
#include "protocol/frame.h"
#include "protocol/messages.h"
#include "protocol/paths.h"
#include "shm/arena.h"
#include "shm/gpu_memory.h"
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

// How long past a job's own deadline Infer waits for shoald's answer before it returns
// TIMEOUT itself (shoald answers at the deadline; this covers a stopped or wedged shoald).
constexpr std::chrono::milliseconds kAnswerMargin{2000};

struct Client::Impl {
  int sock = -1;
  size_t arena_size = 0;
  std::string socket_path;
  std::mutex mu;  // serialises requests on the socket; guards everything below
  uint64_t next_id = 1;
  FrameReader reader;
  std::vector<int> fds;                                   // received, not yet claimed by an answer
  std::map<uint64_t, std::shared_ptr<Arena>> arenas;      // ours: inputs
  std::map<uint64_t, std::shared_ptr<Arena>> out_arenas;  // workers': results, mapped here
  std::shared_ptr<ClientWriter> writer;                   // every frame this client sends

  ~Impl() {
    if (writer) writer->Stop();  // sends the releases still queued
    if (sock >= 0) close(sock);
    CloseAll(&fds);
  }

  // Maps the output arenas an answer introduces ("new_arenas"; their fds came with it, in
  // order). REQUIRES(mu).
  Status TakeArenas(const MapView& m) {
    const msgpack::object* list = m.Find("new_arenas");
    if (list == nullptr || list->type != msgpack::type::ARRAY) return Status::Ok();
    uint32_t n = list->via.array.size;
    if (fds.size() < n) {
      return Status::Internal("shoald announced " + std::to_string(n) + " output arenas with " +
                              std::to_string(fds.size()) + " fds");
    }
    // Every fd of this reply is taken first: one that cannot be mapped must not shift the
    // next reply's fds.
    std::vector<int> mine(fds.begin(), fds.begin() + n);
    fds.erase(fds.begin(), fds.begin() + n);
    Status first = Status::Ok();
    for (uint32_t i = 0; i < n; ++i) {
      int fd = mine[i];
      auto a = MapView::Of(list->via.array.ptr[i], "arenas entry");
      auto id = a.ok() ? a->Uint("arena") : Result<uint64_t>(a.status());
      if (!id.ok()) {
        close(fd);
        if (first.ok()) first = id.status();
        continue;
      }
      auto gpu = a->OptStr("gpu");
      Result<std::unique_ptr<Arena>> mapped = Status::Ok();
      if (gpu.ok() && gpu->has_value()) {  // a worker's GPU output arena
        auto ordinal = GpuOrdinalOfBus(**gpu);
        if (!ordinal.ok()) {
          close(fd);  // Arena::Open/OpenGpu close theirs, also on failure
          mapped = Status(Code::kBadRequest, "output arena on GPU " + **gpu + " cannot be mapped here (" +
                                                 ordinal.status().message() +
                                                 "); ask for host tensors (Infer's host_outputs)");
        } else {
          mapped = Arena::OpenGpu(fd, a->Uint("size").value_or(0), *ordinal);
        }
      } else {
        mapped = Arena::Open(fd);
      }
      if (!mapped.ok()) {
        if (first.ok()) first = mapped.status();
        continue;
      }
      out_arenas[*id] = std::shared_ptr<Arena>(std::move(*mapped));
    }
    return first;
  }

  // A late answer to a request this client gave up on: its results go back to their
  // workers. REQUIRES(mu).
  void Discard(const MapView& m) {
    if (!TakeArenas(m).ok()) return;
    auto ok = m.Bool("ok");
    const msgpack::object* outputs = m.Find("outputs");
    if (!ok.ok() || !*ok || outputs == nullptr) return;
    std::set<std::pair<uint64_t, uint64_t>> seen;
    (void)DecodeTree(*outputs, [&](const Descriptor& d) -> Result<torch::Tensor> {
      auto extent = d.Extent();
      if (extent.ok() && *extent > 0 && out_arenas.count(d.arena) != 0 && seen.insert({d.arena, d.block}).second) {
        writer->Release(d.arena, d.block);
      }
      return torch::Tensor();
    });
  }

  // Sends one request and waits for its reply, until `deadline` if set (then TIMEOUT; a
  // late answer is skipped by a later call). REQUIRES(mu).
  Result<msgpack::object_handle> Call(Writer& w, uint64_t id, const std::vector<int>& send_fds = {},
                                      std::optional<std::chrono::steady_clock::time_point> deadline = std::nullopt) {
    if (auto st = writer->Send(EncodeFrame(w.body()), send_fds); !st.ok()) {
      return Status(Code::kUnavailable, "lost the connection to shoald: " + st.message());
    }
    for (;;) {
      auto body = RecvFrame(sock, &reader, &fds, deadline);
      if (!body.ok() && body.status().code() == Code::kTimeout) {
        return Status(Code::kTimeout, "shoald at " + socket_path + " did not answer request " + std::to_string(id) +
                                          " by its deadline plus " + std::to_string(kAnswerMargin.count()) +
                                          " ms; it may be stopped or overloaded. The client stays usable; a late "
                                          "answer is discarded");
      }
      if (!body.ok()) return Status(Code::kUnavailable, "lost the connection to shoald: " + body.status().message());
      auto oh = Decode(*body);
      if (!oh.ok()) return oh.status();
      MapView m(oh->get());
      auto rid = m.Uint("id");
      if (rid.ok() && *rid < id && *rid != 0) {  // an answer we stopped waiting for
        Discard(m);
        continue;
      }
      if (!rid.ok() || *rid != id) return Status::Internal("reply to another request");
      if (auto st = TakeArenas(m); !st.ok()) return st;
      return Reply(std::move(*oh));
    }
  }

  static Result<msgpack::object_handle> Reply(msgpack::object_handle oh) {
    MapView m(oh.get());
    auto ok = m.Bool("ok");
    if (!ok.ok() || !*ok) {
      std::string tb;
      Status st = StatusFromReply(m, &tb);
      if (!tb.empty()) st = Status(st.code(), st.message() + "\n--- model traceback ---\n" + tb);
      return st;
    }
    return oh;
  }


  // An arena on `device` (-1: host memory, else a GPU ordinal). REQUIRES(mu)
  Result<uint64_t> AddArena(size_t size, int device = -1) {
    auto arena = device < 0 ? Arena::Create("shoal-client", size) : Arena::CreateGpu(device, size);
    if (!arena.ok()) return arena.status();
    uint64_t id = next_id++;
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
    auto reply = Call(w, id, {(*arena)->fd()});
    if (!reply.ok()) return reply.status();
    auto aid = MapView(reply->get()).Uint("arena");
    if (!aid.ok()) return aid.status();
    arenas[*aid] = std::shared_ptr<Arena>(std::move(*arena));
    return *aid;
  }

  // A block in one of our arenas on `device` (-1: host memory). REQUIRES(mu)
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
};

Client::Client(std::unique_ptr<Impl> impl, std::string path) : impl_(std::move(impl)), socket_path_(std::move(path)) {}
Client::~Client() = default;

Result<std::unique_ptr<Client>> Client::Connect(const std::string& socket_path, size_t arena_size) {
  std::string path = socket_path.empty() ? DefaultSocketPath() : socket_path;
  auto impl = std::make_unique<Impl>();
  impl->arena_size = arena_size;
  impl->socket_path = path;
  impl->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->sock < 0) return Status::FromErrno("socket", errno);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return Status::BadRequest("socket path too long: " + path);
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (connect(impl->sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return Status(Code::kUnavailable, "cannot connect to shoald at " + path + ": " + std::strerror(errno) +
                                          "; is shoald running? (start it with `shoald --socket " + path + "`)");
  }
  // Nothing is sent (no arena) before we know who listens.
  if (auto st = CheckServerPeer(impl->sock, path); !st.ok()) return st;
  impl->writer = std::make_shared<ClientWriter>(impl->sock);
  {
    std::lock_guard<std::mutex> lock(impl->mu);
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
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "load", id,
               2 + !device.empty() + options.max_batch.has_value() + options.max_delay_us.has_value() +
                   options.preferred_batch_sizes.has_value());
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
  auto st = impl_->Call(w, id, {fd}).status();
  close(fd);
  return st;
}

Status Client::Unload(const std::string& name) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "unload", id, 1);
  w.Key("name"); w.Str(name);
  return impl_->Call(w, id).status();
}

Result<std::vector<ModelInfo>> Client::Models() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "models", id, 0);
  auto reply = impl_->Call(w, id);
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
    out.push_back(std::move(info));
  }
  return out;
}

Result<std::string> Client::StatusText() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "status", id, 0);
  auto reply = impl_->Call(w, id);
  if (!reply.ok()) return reply.status();
  std::ostringstream os;
  os << reply->get();
  return os.str();
}

Result<HealthInfo> Client::Health() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "health", id, 0);
  auto reply = impl_->Call(w, id);
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
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto block = impl_->Alloc(std::max<size_t>(nbytes, 1), *ordinal);
  if (!block.ok()) return block.status();
  return TensorOver(*block, (*block)->offset, dtype, shape, ContiguousStrides(shape.vec()), nbytes);
}

Result<c10::IValue> Client::Infer(const std::string& model, const std::vector<torch::Tensor>& inputs,
                                  std::optional<std::chrono::milliseconds> timeout, int retries, bool host_outputs) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::map<std::pair<uint64_t, uint64_t>, std::shared_ptr<BlockRef>> keep;  // (arena, block)
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
    auto block = x.numel() > 0 ? BlockOf(x) : nullptr;
    if (block && impl_->arenas.count(block->arena_id) != 0 && block->arena->device() == *ordinal) {
      // Arena-backed: describe the bytes where they are.
      d.arena = block->arena_id;
      d.block = block->offset;
      d.offset = static_cast<uint64_t>(static_cast<uint8_t*>(x.data_ptr()) - block->arena->base());
      d.strides = x.strides().vec();
    } else {
      size_t nbytes = static_cast<size_t>(x.numel()) * x.element_size();
      auto b = impl_->Alloc(std::max<size_t>(nbytes, 1), *ordinal);
      if (!b.ok()) return b.status();
      block = *b;  // a CUDA tensor: one copy on its GPU below
      d.arena = block->arena_id;
      d.block = d.offset = block->offset;
      d.strides = ContiguousStrides(x.sizes().vec());
      if (nbytes > 0) {
        TensorOver(block, block->offset, x.scalar_type(), x.sizes(), d.strides, nbytes).copy_(x);
      }
    }
    keep[{d.arena, d.block}] = block;
    descs.push_back(std::move(d));
  }
  // The writes to GPU inputs (the caller's kernels, our copies) are complete before the
  // worker, another process, reads them.
  for (int g : gpus) torch::cuda::synchronize(g);
  uint64_t id = impl_->next_id++;
  Writer w;
  BeginRequest(&w, "infer", id, 2 + (timeout ? 1 : 0) + (retries > 0 ? 1 : 0) + (host_outputs ? 1 : 0));
  if (host_outputs) {
    w.Key("outputs"); w.Str("cpu");
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
  std::optional<std::chrono::steady_clock::time_point> deadline;
  if (timeout) deadline = std::chrono::steady_clock::now() + *timeout * (1 + std::max(retries, 0)) + kAnswerMargin;
  auto reply = impl_->Call(w, id, {}, deadline);
  if (!reply.ok()) return reply.status();
  const msgpack::object* outputs = MapView(reply->get()).Find("outputs");
  if (outputs == nullptr) return Status::Internal("reply without outputs");
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
    auto& block = keep[{d.arena, d.block}];  // an input returned in place: its block stays ours
    if (!block) {
      if (auto out = impl_->out_arenas.find(d.arena); out != impl_->out_arenas.end()) {
        if (auto st = d.CheckBounds(out->second->size()); !st.ok()) return Status::Internal(st.message());
        // A block the worker allocated for this result: released to it when the last tensor goes.
        block = std::make_shared<BlockRef>(out->second, d.arena, d.block, impl_->writer);
      } else {
        return Status::Internal("output in an unknown arena " + std::to_string(d.arena));
      }
    }
    if (auto st = d.CheckBounds(block->arena->size()); !st.ok()) return Status::Internal(st.message());
    return TensorOver(block, d.offset, *type, d.shape, d.strides, *extent);
  };
  return DecodeTree(*outputs, make);
}

}  // namespace shoal
