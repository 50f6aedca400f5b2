// The /metrics page (docs/architecture.md, "Metrics"): shoald's counters (Metrics) and the
// figures the roles already hold, read from them when the page is scraped, in the
// Prometheus text exposition format. Reads only; no I/O but NVML's GPU memory figures (as
// `status`: supervisor/status_report.h, whose GPU figures it reuses).
// Thread-safety: loop thread only.
#pragma once

#include <cstdint>
#include <string>

#include "supervisor/arena_table.h"
#include "supervisor/metrics.h"
#include "supervisor/model_registry.h"
#include "supervisor/scheduler.h"
#include "supervisor/worker_pool.h"

namespace shoal {

// The page's body; `clients`: client connections now.
std::string MetricsPage(const Metrics& metrics, uint64_t clients, const ModelRegistry& registry,
                        const WorkerPool& pool, const ArenaTable& arenas);

}  // namespace shoal
