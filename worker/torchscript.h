// TorchScript models run by libtorch in the worker, with no Python involved: the archive
// is loaded with torch::jit::load and each job's tensors are built over arena memory
// (torch::from_blob, no copy), like the Python runner does for torch.package models.
//
// The worker's message loop (worker/router.cc) hands this class the messages that concern
// it: load of a TorchScript archive (read from the file shoald sent, never a path),
// infer/unload of a model it holds, arena/drop_arena (client arenas it maps when a job
// first reads them and unmaps when idle and a mapping fails: shm/client_arena_maps.h),
// and the releases and client drops
// of its output arenas. Outputs go into this runner's own output arenas, one owner per
// interpreter lane (shm/output_arenas.h), through the one output encoder.
// Thread-safety: every method may be called from several threads; jobs run concurrently,
// loads/unloads/arena changes wait for them; jobs of one lane come from one thread.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "protocol/messages.h"
#include "protocol/output_tree.h"
#include "shm/arena.h"

namespace shoal {

class TorchScriptModels {
 public:
  TorchScriptModels();
  ~TorchScriptModels();
  TorchScriptModels(const TorchScriptModels&) = delete;
  TorchScriptModels& operator=(const TorchScriptModels&) = delete;

  // Handles `msg` if it is ours; returns true and sets *reply (empty: no reply) if so.
  // `fds` is the worker's FIFO of received fds: an "arena" message's fd is duplicated, not
  // taken (the Python runner maps it too); the archive file of a "load" it handles (a
  // TorchScript archive) is taken and closed, else left for the Python runner.
  bool Handle(const MapView& msg, std::vector<int>* fds, EncodedReply* reply);
  // Whether `msg` is a job of a model held here (Handle will run it).
  bool Holds(const MapView& msg);
  // release {arena, blocks} of one of this runner's output arenas (worker/router.cc read
  // it): frees the blocks it handed out (anything else is ignored) and returns the
  // owner's usage notice ("" with `notice` false).
  std::string Release(uint64_t arena, const std::vector<uint64_t>& blocks, bool notice = true);
  // The client connection is gone: its output arenas are dropped; usage notices.
  std::vector<std::string> DropClient(uint64_t client);

 private:
  // How a load shares GPU weights (worker/shared_weights.h): upload the copy, or map the
  // one behind `map_fd` (`size` bytes; taken by Load when it maps it, else left at >= 0).
  struct Share {
    bool upload = false;
    int map_fd = -1;
    uint64_t size = 0;
  };
  // Loads from the open archive `fd` (not taken); `path` names it in errors. An upload's
  // reply carries the copy's fd (it stays this runner's until the model is unloaded).
  // `quantized_engine`: what the archive's manifest names ("" none).
  EncodedReply Load(uint64_t id, const std::string& name, int fd, const std::string& path, const std::string& device,
                    const std::string& quantized_engine, Share& share);
  EncodedReply Infer(uint64_t id, const MapView& msg);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal
