// The replies to `models`, `status` and `health` (docs/protocol.md): what the registry,
// the scheduler and the worker pool report, packed into one message. Reads figures the
// roles already hold (worker memory comes from the pool's sampler thread); no I/O.
// Thread-safety: loop thread only.
#pragma once

#include <chrono>
#include <cstdint>

#include "protocol/messages.h"
#include "supervisor/model_registry.h"
#include "supervisor/model_repository.h"
#include "supervisor/scheduler.h"
#include "supervisor/worker_pool.h"

namespace shoal {

// "models": [{name, engine, path, ready, queued, failed, last_error?, refused_clients?}];
// `path` is empty unless `show_paths` (for admins only: paths say what exists where).
void PackModels(Writer* w, const ModelRegistry& registry, bool show_paths);

// "repository": {folder, problems: [{file, model, error}]}: the model repository and the
// files of it that do not serve, and why. For admins only (it names files), and only
// where model_repository is set (ShowsRepository).
void PackRepository(Writer* w, const ModelRepository& repository);
bool ShowsRepository(const ModelRepository& repository, bool admin);

struct ServiceFigures {
  uint64_t clients = 0;
  uint64_t arenas = 0;
  double uptime_s = 0;
  bool stopping = false;
  bool admin = false;  // the asker may see archive paths
};
// The body of a `status` reply to request `id`.
void PackStatus(Writer* w, uint64_t id, const ServiceFigures& service, const ModelRegistry& registry,
                const ModelRepository& repository, const Scheduler& scheduler, const WorkerPool& pool);
// One GPU workers are placed on, as `status` and /metrics (supervisor/metrics_page.h) show
// it: its workers, the shared weight copies shoald holds there, its memory in use (NVML).
struct GpuFigures {
  std::string bus;  // PCI bus id
  uint64_t workers = 0;
  uint64_t weights_bytes = 0;  // of the copies below
  std::vector<GpuWeights::Held> copies;
  bool memory_known = false;   // NVML answered
  uint64_t memory_used = 0;    // bytes, every process's
  uint64_t memory_total = 0;
};
// By bus id. Asks NVML for each GPU's memory (no CUDA context).
std::vector<GpuFigures> GpusOf(const std::vector<WorkerPool::WorkerInfo>& workers,
                               const std::vector<GpuWeights::Held>& copies);
// "gpus": [{bus, workers, weights_bytes, weights: [{model, bytes, uploads}],
// memory_used_bytes, memory_total_bytes}]: GpusOf, memory 0 when unknown.
void PackGpus(Writer* w, const std::vector<WorkerPool::WorkerInfo>& workers, const std::vector<GpuWeights::Held>& copies);
// The body of a `health` reply: live, ready (every model ready and not stopping), per model.
void PackHealth(Writer* w, uint64_t id, bool stopping, const ModelRegistry& registry);

}  // namespace shoal
