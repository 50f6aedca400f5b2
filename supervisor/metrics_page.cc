// The /metrics page (supervisor/metrics_page.h).
#include "supervisor/metrics_page.h"

#include <map>
#include <optional>

#include "supervisor/status_report.h"

namespace shoal {

namespace {
// A figure that is 0 where unknown or absent (memory before the first sample, no limit).
std::optional<uint64_t> Known(uint64_t v) { return v > 0 ? std::optional<uint64_t>(v) : std::nullopt; }
}  // namespace

std::string MetricsPage(const Metrics& metrics, uint64_t clients, const ModelRegistry& registry,
                        const WorkerPool& pool, const ArenaTable& arenas) {
  Exposition out;
  metrics.Render(&out);
  auto d = [](uint64_t v) { return static_cast<double>(v); };

  // Jobs per model now: every model of the table, and models still running jobs after
  // they left it.
  auto workers = pool.Describe();
  std::map<std::string, uint64_t> queued, running;
  for (const auto& m : registry.List()) {
    queued[m.name] = m.queued;
    running[m.name] = 0;
  }
  for (const auto& w : workers) {
    if (w.state == "restarting") continue;
    for (const auto& i : w.interps) {
      if (i.busy) ++running[i.model];
    }
  }
  out.Family("shoal_jobs_queued", "gauge", "Jobs accepted and waiting for a worker, per model.");
  for (const auto& [model, n] : queued) out.Sample("shoal_jobs_queued", {{"model", model}}, d(n));
  out.Family("shoal_jobs_running", "gauge", "Jobs running on a worker now, per model.");
  for (const auto& [model, n] : running) out.Sample("shoal_jobs_running", {{"model", model}}, d(n));

  out.Family("shoal_worker_restarts_total", "counter",
             "Worker processes that died or were killed and are replaced (crashes, deadlines, memory limits).");
  out.Sample("shoal_worker_restarts_total", {}, d(pool.restarts()));

  // Per worker slot: a slot keeps its number across restarts, so its series do too.
  auto per_worker = [&](const char* name, const char* help, auto value) {
    out.Family(name, "gauge", help);
    for (const auto& w : workers) {
      if (w.state == "restarting" || w.pid <= 0) continue;
      if (std::optional<uint64_t> v = value(w)) out.Sample(name, {{"worker", std::to_string(w.slot)}}, d(*v));
    }
  };
  per_worker("shoal_worker_pss_bytes",
             "Proportional set size of each live worker (shared pages counted once across the processes sharing "
             "them), sampled off the loop once a second.",
             [](const WorkerPool::WorkerInfo& w) { return Known(w.memory.pss_kb * 1024); });
  per_worker("shoal_worker_rss_bytes", "Resident set size of each live worker, sampled as its Pss.",
             [](const WorkerPool::WorkerInfo& w) { return Known(w.memory.rss_kb * 1024); });
  per_worker("shoal_worker_memory_limit_bytes",
             "Memory limit of each live worker (worker_memory_mb); absent where it has none.",
             [](const WorkerPool::WorkerInfo& w) { return Known(w.memory_limit); });
  per_worker("shoal_worker_output_arena_bytes",
             "Bytes of each worker's output arenas in blocks its clients have not released yet.",
             [](const WorkerPool::WorkerInfo& w) { return std::optional<uint64_t>(w.output_bytes); });

  auto arena_bytes = arenas.ClientArenaBytes();
  out.Family("shoal_client_arena_bytes", "gauge",
             "Bytes of the client arenas registered now, in host memory (memfds) and on GPUs.");
  out.Sample("shoal_client_arena_bytes", {{"memory", "host"}}, d(arena_bytes.host));
  out.Sample("shoal_client_arena_bytes", {{"memory", "gpu"}}, d(arena_bytes.gpu));
  out.Family("shoal_client_connections", "gauge", "Client connections on shoald's socket.");
  out.Sample("shoal_client_connections", {}, d(clients));

  // The same figures as `status`'s "gpus".
  auto gpus = GpusOf(workers, pool.GpuWeightCopies());
  out.Family("shoal_gpu_shared_weights_bytes", "gauge",
             "GPU memory of the shared weight copies shoald holds, per GPU (PCI bus id).");
  for (const auto& g : gpus) out.Sample("shoal_gpu_shared_weights_bytes", {{"gpu", g.bus}}, d(g.weights_bytes));
  out.Family("shoal_gpu_memory_used_bytes", "gauge",
             "Memory in use on each GPU workers are placed on, by every process (NVML); absent where unknown.");
  for (const auto& g : gpus) {
    if (g.memory_known) out.Sample("shoal_gpu_memory_used_bytes", {{"gpu", g.bus}}, d(g.memory_used));
  }
  out.Family("shoal_gpu_memory_total_bytes", "gauge", "Memory of each GPU workers are placed on (NVML).");
  for (const auto& g : gpus) {
    if (g.memory_known) out.Sample("shoal_gpu_memory_total_bytes", {{"gpu", g.bus}}, d(g.memory_total));
  }
  return out.Take();
}

}  // namespace shoal
