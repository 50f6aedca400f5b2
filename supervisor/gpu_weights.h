// GpuWeights: one copy of each model's GPU weights per GPU, whatever the number of
// workers there (docs/architecture.md, "Shared GPU weights").
//
// Owns, per (model, GPU), the descriptor of the GPU memory that holds the model's weights
// (a CUDA allocation the worker that uploaded them exported; shoald never maps it and
// never creates a CUDA context), and the loads that wait for that upload. The first load
// of a model on a GPU uploads (Step::kUpload); loads on that GPU meanwhile wait; later
// ones, replacements of crashed workers included, map the same memory (kMap). A model
// that puts no weights on the GPU ("auto" of a CPU export) loads plainly there (kPlain).
// Forget (unload) drops the descriptors: the driver frees the memory once no worker maps
// it either. Versions are separate models ("m:1", "m:2"), each with its own copy.
// Thread-safety: loop thread only (WorkerPool's).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "supervisor/async_channel.h"

namespace shoal {

class GpuWeights {
 public:
  enum class Step { kUpload, kMap, kPlain, kWait };
  struct Next {
    Step step = Step::kPlain;
    uint64_t ticket = 0;              // kUpload: names this upload in Uploaded/Failed
    std::shared_ptr<OwnedFd> memory;  // kMap: the allocation's descriptor
    uint64_t bytes = 0;               // kMap: its size
  };
  // What a load of `model` on GPU `bus` does now. kWait: `resume` runs once the upload
  // under way ends, either way (the load then asks again).
  Next Begin(const std::string& model, const std::string& bus, std::function<void()> resume);
  // Upload `ticket` ended well: `memory` holds the weights (`bytes`), or nullptr: the model
  // put no weights on this GPU. Ignored for an upload that was forgotten meanwhile.
  void Uploaded(const std::string& model, const std::string& bus, uint64_t ticket, std::shared_ptr<OwnedFd> memory,
                uint64_t bytes);
  // Upload `ticket` failed (or its worker died): the next load on that GPU uploads.
  void Failed(const std::string& model, const std::string& bus, uint64_t ticket);
  // The model is unloaded: its descriptors go; loads still waiting are resumed.
  void Forget(const std::string& model);

  struct Held {
    std::string bus, model;
    uint64_t bytes = 0;    // GPU memory holding its weights
    uint64_t uploads = 0;  // uploads that succeeded: 1 (workers that start later map it)
  };
  std::vector<Held> List() const;  // the copies held now, by GPU then model

 private:
  struct Entry {
    bool uploading = false;
    uint64_t ticket = 0;
    std::shared_ptr<OwnedFd> memory;  // null once uploaded: no weights on the GPU
    uint64_t bytes = 0;
    uint64_t uploads = 0;
    std::vector<std::function<void()>> waiting;
  };
  // Runs what waited on an entry that just left the uploading state.
  static void Resume(std::vector<std::function<void()>> waiting);

  std::map<std::pair<std::string, std::string>, Entry> entries_;  // by (bus, model)
  uint64_t next_ticket_ = 1;
};

}  // namespace shoal
