// TorchScript models run by libtorch in the worker, with no Python involved: the archive
// is loaded with torch::jit::load and each job's tensors are built over arena memory
// (torch::from_blob, no copy), like the Python runner does for torch.package models.
//
// The worker's message loop (worker/main.cc) hands this class the messages that concern
// it: load of a TorchScript archive, infer/unload of a model it holds, arena (it maps
// every arena too). Thread-safety: Handle may be called from several threads; jobs run
// concurrently, loads/unloads/arena changes wait for them.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "protocol/messages.h"
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
  // taken (the Python runner maps it too).
  bool Handle(const MapView& msg, const std::vector<int>& fds, std::string* reply);
  // Whether `msg` is a job of a model held here (Handle will run it).
  bool Holds(const MapView& msg);

 private:
  std::string Load(uint64_t id, const std::string& name, const std::string& path);
  std::string Infer(uint64_t id, const MapView& msg);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shoal
