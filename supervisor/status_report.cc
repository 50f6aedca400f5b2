#include "supervisor/status_report.h"

#include <unistd.h>

#include <map>

#include "supervisor/gpu_usage.h"

namespace shoal {

void PackModels(Writer* w, const ModelRegistry& registry, bool show_paths) {
  auto models = registry.List();
  w->Key("models");
  w->pk().pack_array(static_cast<uint32_t>(models.size()));
  for (const auto& m : models) {
    w->Map(12 + (m.failed ? 1 : 0) + (m.refused.empty() ? 0 : 1) + (m.batching ? 1 : 0) + (m.entry.empty() ? 0 : 1));
    w->Key("name"); w->Str(m.name);
    w->Key("device"); w->Str(m.device);  // as loaded: auto (where it was exported), cpu, cuda, cuda:N
    w->Key("engine"); w->Str(m.engine);
    w->Key("path"); w->Str(show_paths ? m.path : std::string());
    w->Key("ready"); w->Val(m.ready);
    if (!m.entry.empty()) { w->Key("entry"); w->Str(m.entry); }  // the pickle it serves (torch.package)
    w->Key("methods");  // callable besides forward
    w->pk().pack_array(static_cast<uint32_t>(m.methods.size()));
    for (const auto& name : m.methods) w->Str(name);
    for (const auto* specs : {&m.inputs, &m.outputs}) {  // as its manifest declares them: often none
      w->Key(specs == &m.inputs ? "inputs" : "outputs");
      w->pk().pack_array(static_cast<uint32_t>(specs->size()));
      for (const auto& s : *specs) {
        w->Map(3);
        w->Key("name"); w->Str(s.name);
        w->Key("dtype"); w->Str(s.dtype);
        w->Key("shape");  // -1: any size
        w->pk().pack_array(static_cast<uint32_t>(s.shape.size()));
        for (int64_t n : s.shape) w->pk().pack_int64(n);
      }
    }
    w->Key("queued"); w->Val(static_cast<uint64_t>(m.queued));
    w->Key("failed"); w->Val(m.failed);
    // Dynamic batching: runs of more than one job, and the jobs they ran.
    w->Key("batches"); w->Val(m.batches.batches);
    w->Key("batched_jobs"); w->Val(m.batches.batched_jobs);
    if (m.batching) {
      w->Key("batching");
      w->Map(3);
      w->Key("max_batch"); w->Val(static_cast<uint64_t>(m.batching->max_batch));
      w->Key("max_delay_us"); w->Val(m.batching->max_delay_us);
      w->Key("preferred_batch_sizes");
      w->pk().pack_array(static_cast<uint32_t>(m.batching->preferred_batch_sizes.size()));
      for (uint32_t n : m.batching->preferred_batch_sizes) w->Val(static_cast<uint64_t>(n));
    }
    if (m.failed) { w->Key("last_error"); w->Str(m.last_error); }
    if (m.refused.empty()) continue;
    w->Key("refused_clients");  // clients whose jobs crashed it too often: [{uid, seconds}]
    w->pk().pack_array(static_cast<uint32_t>(m.refused.size()));
    for (const auto& [uid, seconds] : m.refused) {
      w->Map(2);
      w->Key("uid"); w->Val(static_cast<uint64_t>(uid));
      w->Key("seconds"); w->Val(seconds);
    }
  }
}

bool ShowsRepository(const ModelRepository& repository, bool admin) { return admin && !repository.folder().empty(); }

void PackRepository(Writer* w, const ModelRepository& repository) {
  auto problems = repository.Problems();
  w->Key("repository");
  w->Map(2);
  w->Key("folder"); w->Str(repository.folder());
  w->Key("problems");
  w->pk().pack_array(static_cast<uint32_t>(problems.size()));
  for (const auto& p : problems) {
    w->Map(3);
    w->Key("file"); w->Str(p.file);
    w->Key("model"); w->Str(p.model);
    w->Key("error"); w->Str(p.error);
  }
}

void PackStatus(Writer* w, uint64_t id, const ServiceFigures& service, const ModelRegistry& registry,
                const ModelRepository& repository, const Scheduler& scheduler, const WorkerPool& pool) {
  bool repo = ShowsRepository(repository, service.admin);
  BeginReply(w, id, 12 + (repo ? 1 : 0));
  if (repo) PackRepository(w, repository);
  w->Key("pid"); w->Val(static_cast<int64_t>(getpid()));
  w->Key("clients"); w->Val(service.clients);
  w->Key("arenas"); w->Val(service.arenas);
  w->Key("zygote"); w->Val(static_cast<int64_t>(pool.zygote_pid()));
  w->Key("uptime_s"); w->Val(service.uptime_s);
  w->Key("queued"); w->Val(static_cast<uint64_t>(scheduler.queued()));
  w->Key("jobs_done"); w->Val(scheduler.jobs_done());
  w->Key("jobs_failed"); w->Val(scheduler.jobs_failed());
  w->Key("worker_restarts"); w->Val(pool.restarts());
  PackModels(w, registry, service.admin);
  auto workers = pool.Describe();
  w->Key("workers");
  w->pk().pack_array(static_cast<uint32_t>(workers.size()));
  for (const auto& wk : workers) {
    w->Map(13);
    w->Key("slot"); w->Val(wk.slot);
    w->Key("gpu"); w->Str(wk.gpu);  // PCI bus id of the worker's GPU; empty: none
    w->Key("pid"); w->Val(static_cast<int64_t>(wk.pid));
    w->Key("state"); w->Str(wk.state);
    w->Key("interpreters");  // what each interpreter runs
    w->pk().pack_array(static_cast<uint32_t>(wk.interps.size()));
    for (size_t i = 0; i < wk.interps.size(); ++i) {
      const auto& in = wk.interps[i];
      w->Map(4);
      w->Key("index"); w->Val(static_cast<uint64_t>(i));
      w->Key("state"); w->Str(wk.state == "restarting" ? "restarting" : in.busy ? "busy" : "idle");
      auto job = [w](uint64_t id, const std::string& model) {
        if (id == 0) {
          w->pk().pack_nil();
          return;
        }
        w->Map(2);
        w->Key("id"); w->Val(id);
        w->Key("model"); w->Str(model);
      };
      w->Key("job");
      job(in.busy ? in.job : 0, in.model);
      w->Key("next");  // sent ahead of its turn (send_ahead_ms): it runs when `job` ends
      job(in.next, in.next_model);
    }
    w->Key("models"); w->Val(wk.models);
    w->Key("rss_kb"); w->Val(wk.memory.rss_kb);
    w->Key("pss_kb"); w->Val(wk.memory.pss_kb);
    w->Key("memory_limit_mb"); w->Val(wk.memory_limit >> 20);  // 0: none
    w->Key("memory_limit_by"); w->Str(wk.memory_by);  // "cgroup v2", "cgroup v1", "sampler", "" (none)
    w->Key("client_arenas"); w->Val(wk.client_arenas);
    w->Key("output_bytes"); w->Val(wk.output_bytes);
    w->Key("output_arenas"); w->Val(wk.output_arenas);
  }
  PackGpus(w, workers, pool.GpuWeightCopies());
}

std::vector<GpuFigures> GpusOf(const std::vector<WorkerPool::WorkerInfo>& workers,
                               const std::vector<GpuWeights::Held>& copies) {
  std::map<std::string, GpuFigures> gpus;
  for (const auto& wk : workers) {
    if (!wk.gpu.empty()) ++gpus[wk.gpu].workers;
  }
  for (const auto& c : copies) {
    GpuFigures& g = gpus[c.bus];
    g.copies.push_back(c);
    g.weights_bytes += c.bytes;
  }
  std::vector<GpuFigures> out;
  for (auto& [bus, g] : gpus) {
    g.bus = bus;
    if (auto memory = GpuMemoryOf(bus); memory.ok()) {  // NVML: no CUDA context
      g.memory_known = true;
      g.memory_used = memory->used;
      g.memory_total = memory->total;
    }
    out.push_back(std::move(g));
  }
  return out;
}

void PackGpus(Writer* w, const std::vector<WorkerPool::WorkerInfo>& workers, const std::vector<GpuWeights::Held>& copies) {
  auto gpus = GpusOf(workers, copies);
  w->Key("gpus");
  w->pk().pack_array(static_cast<uint32_t>(gpus.size()));
  for (const auto& g : gpus) {
    w->Map(6);
    w->Key("bus"); w->Str(g.bus);
    w->Key("workers"); w->Val(g.workers);
    w->Key("weights_bytes"); w->Val(g.weights_bytes);  // shared copies shoald holds on it
    w->Key("weights");
    w->pk().pack_array(static_cast<uint32_t>(g.copies.size()));
    for (const auto& c : g.copies) {
      w->Map(3);
      w->Key("model"); w->Str(c.model);
      w->Key("bytes"); w->Val(c.bytes);
      w->Key("uploads"); w->Val(c.uploads);
    }
    w->Key("memory_used_bytes"); w->Val(g.memory_used);  // every process's; 0: unknown
    w->Key("memory_total_bytes"); w->Val(g.memory_total);
  }
}

void PackHealth(Writer* w, uint64_t id, bool stopping, const ModelRegistry& registry) {
  auto models = registry.List();
  bool all_ready = !stopping;
  for (const auto& m : models) all_ready = all_ready && m.ready;
  BeginReply(w, id, 4);
  w->Key("live"); w->Val(true);  // answering at all is liveness
  w->Key("ready"); w->Val(all_ready);
  w->Key("stopping"); w->Val(stopping);
  w->Key("models");
  w->pk().pack_map(static_cast<uint32_t>(models.size()));
  for (const auto& m : models) {
    w->Key(m.name);
    w->Val(m.ready);
  }
}

}  // namespace shoal
