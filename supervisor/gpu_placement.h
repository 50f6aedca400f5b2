// GpuPlacement: which GPU each worker slot runs on (docs/architecture.md, "GPU").
//
// Owns the list of GPUs workers are placed on: the `gpus` setting ("all": every GPU
// shoal-worker --list-gpus reports; "none"; or indices "0,2" into that list), each GPU's
// PCI bus id and the CUDA_VISIBLE_DEVICES value that shows a worker that GPU alone. Slots
// go round-robin over the list. shoald itself never initialises CUDA: it asks a
// shoal-worker process (exec'd, exits at once) which GPUs there are.
// Also the one check of a load's device ("auto", "cpu", "cuda", "cuda:N").
// Thread-safety: loop thread only (Discover at start-up, then const).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "shoal/status.h"

namespace shoal {

class GpuPlacement {
 public:
  // Finds the GPUs (`worker_binary --list-gpus`) and applies `setting`. An error names a
  // bad setting; no GPU at all is not an error (workers run without one).
  Status Discover(const std::string& worker_binary, const std::string& setting);
  // For tests and hosts where the list is known: bus ids in CUDA order.
  Status Apply(const std::vector<std::string>& buses, const std::string& setting);

  size_t count() const { return gpus_.size(); }
  // The GPU index (into this list) of `slot`, or -1 when workers have no GPU.
  int GpuOf(int slot) const;
  std::string BusOf(int slot) const;  // "" without a GPU
  // The worker's CUDA_VISIBLE_DEVICES: its GPU alone; "" (none visible) with gpus=none;
  // nullopt (unchanged) when there are no GPUs anyway.
  std::optional<std::string> CudaVisible(int slot) const;
  // Checks a load's device; "" when absent means "auto". Errors say what is available.
  Result<std::string> CheckDevice(const std::string& model, const std::string& device) const;
  // Whether `bus` is one of the GPUs workers are placed on (a GPU arena elsewhere could
  // not be mapped by any worker).
  bool Knows(const std::string& bus) const;
  // Whether a model loaded for `device` runs in `slot`'s worker ("cuda:N": on GPU N only).
  bool Places(int slot, const std::string& device) const;
  // What the worker is told: "auto", "cpu" or "cuda" (it sees one GPU).
  static std::string WorkerDevice(const std::string& device);

 private:
  struct Gpu {
    std::string bus;
    std::string visible;  // its CUDA_VISIBLE_DEVICES value
  };
  std::vector<Gpu> gpus_;
  bool hidden_ = false;  // gpus=none: workers see no GPU
};

}  // namespace shoal
