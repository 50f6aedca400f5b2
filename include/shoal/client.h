// shoal::Client: the C++ client of shoald. Start here.
//
//   auto c = shoal::Client::Connect();                 // $SHOAL_SOCKET or the default socket
//   if (!c.ok()) ... c.status().ToString()
//   torch::Tensor x = (*c)->Empty({1, 3, 224, 224});   // lives in shared memory: no copy
//   auto y = (*c)->Infer("resnet", {x});               // Result<c10::IValue>
//
// Inputs are torch::Tensors on the CPU or a GPU. An ordinary tensor costs one copy into the
// client's arena (for a CUDA tensor, a GPU arena: one copy on the GPU); a tensor from
// Empty() costs none (Empty(shape, dtype, torch::kCUDA) lives in GPU memory shared the same
// way). Before a job is sent the client waits for the GPU work on its inputs; the worker's
// work is complete before its answer arrives; outputs a model leaves on its GPU come back as
// CUDA tensors (host_outputs = true: on the CPU). Outputs keep the model's structure (tensor,
// tuple, list, dict, scalars) and their tensors are views on shared memory (output arenas
// the worker made for this connection) whose blocks go back to their worker when the last
// reference goes (the release is sent at once, by a thread of the client's own); they stay
// valid after the Client is gone.
// Many jobs may be in flight on one connection: InferAsync sends a job and returns a
// std::future of its outputs; shoald answers in any order (a slow job does not hold back a
// fast one) and each future gets exactly one value: the outputs, the job's error, TIMEOUT,
// or UNAVAILABLE when the connection is lost or the Client is destroyed first.
//
//   std::vector<std::future<shoal::Result<c10::IValue>>> jobs;
//   for (auto& x : batch) jobs.push_back(c->InferAsync("resnet", {x}));
//   for (auto& j : jobs) { auto y = j.get(); ... }
//
// A job with a timeout fails with Code::kTimeout by itself when shoald has not answered by
// the deadline plus 2 s (a stopped or wedged shoald); the client stays usable and drops
// the late answer, releasing its outputs.
// Errors are Status values whose code says what happened (Code::kWorkerCrashed,
// kModelNotFound, kModelError (the message carries the model's traceback), kTimeout,
// kBadRequest, ...).
// Thread-safety: a Client may be shared by threads. Requests are written under one send
// lock; replies are read by whichever thread waits in Infer (or a call like Models) when no
// other thread is reading, else by a reader thread the first InferAsync starts
// (client/connection.h). Futures and results may outlive the Client.
#pragma once

#include <ATen/core/ivalue.h>
#include <torch/types.h>  // torch::Tensor and the factories; not torch/torch.h (nn, optim, data: much slower to compile)

#include <chrono>
#include <cstdint>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

class Arena;

struct ModelInfo {
  std::string name;
  std::string path;    // for admins; empty for others
  std::string engine;  // "python" or "torchscript"
  std::string device;  // as loaded: auto (where it was exported), cpu, cuda, cuda:N
  bool ready = false;
  std::string entry;                 // the pickle a torch.package archive serves; empty otherwise
  std::vector<std::string> methods;  // allowed besides forward
  // The tensors it takes and returns as its manifest declares them (shoal.export with
  // example inputs); often none: a Python model's forward takes what it takes.
  struct Tensor {
    std::string name;            // may be empty (an output of a tuple)
    std::string dtype;           // shoal's name: "float32", ...
    std::vector<int64_t> shape;  // -1: any size
  };
  std::vector<Tensor> inputs, outputs;
};

struct HealthInfo {
  bool live = false;      // shoald answered
  bool ready = false;     // every loaded model has a live worker holding it
  bool stopping = false;  // draining after SIGTERM
  std::map<std::string, bool> models;  // per model: ready?
};

// How Infer runs a call (the IValue overloads): `retries` = 1 re-runs it once on a fresh
// worker if its worker crashes; `host_outputs`: GPU outputs come back on the CPU; `method`:
// empty calls forward, else a method of the served object its load or manifest allows.
struct InferOptions {
  std::optional<std::chrono::milliseconds> timeout;
  int retries = 0;
  bool host_outputs = false;
  std::string method;
};

class Client {
 public:
  static constexpr size_t kDefaultArenaSize = 256u << 20;

  // Connects to shoald at `socket_path` (empty: the default path) and registers an arena.
  static Result<std::unique_ptr<Client>> Connect(const std::string& socket_path = "",
                                                 size_t arena_size = kDefaultArenaSize);
  // Takes `sock`, a socket connected to shoald by someone else (shoald's socketpair with
  // shoal-http, its HTTP front); `label` names it in messages. Closes it on error.
  static Result<std::unique_ptr<Client>> Adopt(int sock, const std::string& label,
                                               size_t arena_size = kDefaultArenaSize);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Opens `archive_path` with this process's rights and passes the open file to shoald
  // (which never opens a client's path); BAD_REQUEST if it cannot be opened here.
  // `device`: "" (where it was exported), "cpu", "cuda" or "cuda:N".
  Status Load(const std::string& name, const std::string& archive_path, const std::string& device = "");
  // A load's options: `device` as above; dynamic batching (docs/architecture.md): each
  // key set overrides the archive manifest's "batching" (max_batch 1: off). `entry`
  // ("package/resource.pkl", MultiPy's load_pickle(package, resource)): the pickle of a
  // torch.package archive to serve (empty: the manifest's entry, else model/model.pkl).
  // `methods`: methods besides forward that clients may call (InferOptions::method), with
  // those the manifest allows.
  struct LoadOptions {
    std::string device;
    std::optional<uint32_t> max_batch;
    std::optional<uint64_t> max_delay_us;
    std::optional<std::vector<uint32_t>> preferred_batch_sizes;
    std::string entry;
    std::vector<std::string> methods;
  };
  Status Load(const std::string& name, const std::string& archive_path, const LoadOptions& options);
  Status Unload(const std::string& name);
  Result<std::vector<ModelInfo>> Models();
  // The status map as JSON-like text (workers, queue, counters), for display.
  Result<std::string> StatusText();
  Result<HealthInfo> Health();

  // An uninitialised tensor in shared memory (on a CUDA `device`: in a GPU arena); fill it
  // in place and pass it to Infer.
  Result<torch::Tensor> Empty(at::IntArrayRef shape, at::ScalarType dtype = at::kFloat,
                              torch::Device device = torch::kCPU);

  // `retries` = 1 re-runs the job once on a fresh worker if its worker crashes. Reads its
  // own answer when no other thread is reading (no thread hand-off).
  Result<c10::IValue> Infer(const std::string& model, const std::vector<torch::Tensor>& inputs,
                            std::optional<std::chrono::milliseconds> timeout = std::nullopt, int retries = 0,
                            bool host_outputs = false);
  // Infer without waiting: the job is sent before this returns (errors in the inputs come
  // back through the future at once). The input tensors may be dropped at once; one from
  // Empty() keeps its block until the job is answered, so do not write into it before.
  std::future<Result<c10::IValue>> InferAsync(const std::string& model, const std::vector<torch::Tensor>& inputs,
                                              std::optional<std::chrono::milliseconds> timeout = std::nullopt,
                                              int retries = 0, bool host_outputs = false);

  // The model's own call (docs/protocol.md, "Call structure"): model(*args, **kwargs) where
  // each argument is an IValue tree of tensors, tuples (named ones too), lists, dicts (str
  // or int keys), doubles, ints, bools, strings and None, e.g.
  //   c->Infer("bert", {}, {{"input_ids", ids}, {"attention_mask", mask}});
  //   c->Infer("detector", {c10::List<torch::Tensor>({img1, img2})}, {});
  // An argument of any other type is BAD_REQUEST before anything is sent. `kwargs` has no
  // default, so that Infer(model, {x}) stays the tensor overload above.
  Result<c10::IValue> Infer(const std::string& model, const std::vector<c10::IValue>& args,
                            const std::map<std::string, c10::IValue>& kwargs, const InferOptions& options = InferOptions());
  std::future<Result<c10::IValue>> InferAsync(const std::string& model, const std::vector<c10::IValue>& args,
                                              const std::map<std::string, c10::IValue>& kwargs,
                                              const InferOptions& options = InferOptions());

  const std::string& socket_path() const { return socket_path_; }

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl, std::string path);
  std::unique_ptr<Impl> impl_;
  std::string socket_path_;
};

}  // namespace shoal
