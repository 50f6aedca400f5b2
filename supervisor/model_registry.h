// ModelRegistry: which models shoald serves, under which names and versions, and in what
// state: loading, serving, failed (crash loop), draining (being unloaded).
//
// Owns the model table, the load and unload state machines (a load goes to every live
// worker and answers once with the first error; an unload waits for the model's jobs, up
// to unload_grace_ms) and each model's crash record. Version resolution: "name:version" as
// given; a plain "name" runs the newest servable "name:*". It reaches workers only
// through ModelHosts (the worker pool in shoald, a fake in tests) and jobs only through
// JobQueue (the scheduler).
// Thread-safety: loop thread only; callbacks run on the loop thread.
#pragma once

#include <sys/types.h>

#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "shoal/status.h"
#include "supervisor/archive_file.h"
#include "supervisor/config.h"
#include "supervisor/metrics.h"
#include "supervisor/scheduler.h"

namespace shoal {

// A worker's death charged to one model: to the client (uid) whose job was running, or
// to nobody when the worker was loading the model.
struct CrashCharge {
  std::string model;
  std::optional<uid_t> client;
};

// What the registry needs of the worker pool.
class ModelHosts {
 public:
  virtual ~ModelHosts() = default;
  struct Worker {
    int slot = -1;
    uint64_t generation = 0;
  };
  virtual std::vector<Worker> Live() const = 0;
  using LoadDone = std::function<void(const Status& st, const std::string& traceback, const std::string& engine)>;
  // Loads `name` from `archive` (the held file, sent along) in `worker`. On success the model is marked ready there if
  // keep() still holds when the reply comes, else unloaded again; then done() runs (once,
  // also when the worker dies or is gone).
  // `device` is the load's ("auto", "cpu", "cuda", "cuda:N"; see supervisor/gpu_placement.h).
  virtual void Load(Worker worker, const std::string& name, const ArchiveRef& archive, const std::string& device,
                    std::function<bool()> keep, LoadDone done) = 0;
  // Whether a model loaded for `device` runs in `worker` ("cuda:N": workers on GPU N).
  virtual bool Places(Worker /*worker*/, const std::string& /*device*/) const { return true; }
  // Whether `worker` has `name` ready or a load of it in flight.
  virtual bool HasOrLoads(Worker worker, const std::string& name) const = 0;
  // Unloads `name` from every live worker that has it ready.
  virtual void Unload(const std::string& name) = 0;
  virtual size_t Serving(const std::string& name) const = 0;  // live workers with it ready
};

// A load request's batching keys (absent: the manifest's value stands).
struct BatchOverride {
  std::optional<uint32_t> max_batch;
  std::optional<uint64_t> max_delay_us;
  std::optional<std::vector<uint32_t>> preferred_batch_sizes;
};

class ModelRegistry {
 public:
  // `config`, `hosts` and `jobs` must outlive the registry.
  ModelRegistry(boost::asio::io_context& io, const SupervisorConfig& config, ModelHosts* hosts, JobQueue* jobs);
  ModelRegistry(const ModelRegistry&) = delete;
  ModelRegistry& operator=(const ModelRegistry&) = delete;

  // Called with a model's name and why, when a crash loop marks it failed.
  void set_on_failed(std::function<void(const std::string&, const std::string&)> fn) { on_failed_ = std::move(fn); }

  // A model of the configuration (its archive opened by shoald itself): loaded into each
  // worker as it starts, on `device`.
  void AddConfigured(const std::string& name, ArchiveRef archive, const std::string& device = "auto");

  using Done = std::function<void(const Status& st, const std::string& traceback)>;
  // Loads an archive (already validated; held from now on for the model's lifetime) under
  // `name` in every live worker; `done` runs once every worker answered. An immediate error (the name is taken) is returned instead.
  // `device`: where it runs ("auto": where it was exported; gpu_placement.h checked it).
  // `batching`: the load's keys over the manifest's "batching" (CheckBatchPolicy; not for
  // TorchScript archives), BAD_REQUEST at once when shoald cannot follow them.
  // `methods` (checked: CheckMethodNames): methods besides forward that clients may call,
  // with those of the archive's manifest.
  Status Load(const std::string& name, ArchiveRef archive, Done done, const std::string& device = "auto",
              const BatchOverride& batching = {}, std::vector<std::string> methods = {});
  // "name:version" unloads that version; a plain name unloads "name" or every "name:*".
  // `done` runs once their jobs are finished or the grace period is over.
  Status Unload(const std::string& name, std::function<void()> done);
  // A new worker: loads every servable model into it; each(model, status, traceback) per
  // model, then all_done().
  void LoadInto(ModelHosts::Worker worker,
                std::function<void(const std::string&, const Status&, const std::string&)> each,
                std::function<void()> all_done);

  // The key a job for `name` runs under (see above), or MODEL_NOT_FOUND / UNAVAILABLE.
  Result<std::string> Resolve(const std::string& name) const;
  bool Ready(const std::string& key) const;  // not failed, and some live worker has it
  bool AllReady() const;
  // A worker died while running (a job of `charge.client`) or loading `charge.model`.
  // Blame goes where it belongs: a client whose jobs crash crash_loop_limit workers within
  // crash_window_s is refused that model for the window, and others keep it; the model is
  // marked failed only for that many crashes while loading, or job crashes from at least
  // two distinct clients within the window. Says which of these it decided.
  CrashVerdict RecordCrash(const CrashCharge& charge, const std::string& how);
  // OK unless `client` is refused `key` (see RecordCrash); then why, and until when.
  Status Admits(const std::string& key, uid_t client) const;
  // The device model `key` was loaded for ("auto" when unknown).
  std::string Device(const std::string& key) const;
  // Whether model `key`'s manifest lets inputs with overlapping strides through.
  bool TakesBroadcastInputs(const std::string& key) const;
  // OK when clients may call `method` of model `key` (empty or "forward": always; else one
  // its load or its manifest allows); else a BadRequest that says which methods are
  // allowed and how an admin allows another.
  Status AllowsMethod(const std::string& key, const std::string& method) const;
  // Model `key`'s dynamic batching, or null when it runs its jobs one at a time.
  std::shared_ptr<const BatchPolicy> Batching(const std::string& key) const;
  // Finishes unloads whose models have no jobs left.
  void CheckUnloads();

  struct Info {
    std::string name, engine, path, last_error, device;  // path: the archive's label (ArchiveFile)
    std::string entry;                 // the pickle it serves (torch.package), else empty
    std::vector<std::string> methods;  // allowed besides forward
    std::vector<TensorSpec> inputs, outputs;  // as its manifest declares them (often none)
    bool ready = false;
    bool failed = false;
    size_t queued = 0;
    std::vector<std::pair<uid_t, double>> refused;  // clients refused, seconds left
    std::shared_ptr<const BatchPolicy> batching;    // null: off
    BatchCounts batches;
  };
  std::vector<Info> List() const;
  std::vector<std::string> Names() const;
  // Whether `key` is in the table at all (loading, serving, failed or being unloaded).
  bool Has(const std::string& key) const { return models_.count(key) != 0; }
  // Whether `key` is loaded, loading or marked failed from this very file, and not being
  // unloaded: the model repository unloads only what it loaded itself.
  bool Holds(const std::string& key, const ArchiveRef& archive) const;
  size_t size() const { return models_.size(); }

 private:
  struct Entry {
    ArchiveRef archive;  // the open file workers load from
    std::string device = "auto";  // as loaded (ModelHosts::Places says where it runs)
    std::shared_ptr<const BatchPolicy> batching;  // null: off
    std::vector<std::string> methods;  // the load's allowed methods (the manifest's: Methods())
    bool loading = true;    // a client's load() is still waiting for the workers
    bool failed = false;    // crash loop: no longer loaded nor served until loaded again
    bool draining = false;  // being unloaded: takes no new jobs, finishes those it has
    std::string engine;     // "python" (torch.package) or "libtorch" (TorchScript), as workers report
    std::string last_error;
    struct Crash {
      std::chrono::steady_clock::time_point when;
      std::optional<uid_t> client;  // nullopt: while loading
    };
    std::deque<Crash> crashes;  // within the crash window
    struct Refusal {
      std::chrono::steady_clock::time_point until;
      std::string why;
    };
    std::map<uid_t, Refusal> refused;
    // The methods besides forward clients may call: the manifest's, then the load's.
    std::vector<std::string> Methods() const;
  };
  void MarkFailed(const std::string& key, Entry* m, const std::string& why);
  struct UnloadOp {
    std::function<void()> done;
    std::set<std::string> keys;  // still draining
    std::unique_ptr<boost::asio::steady_timer> grace;
  };
  void LoadIn(ModelHosts::Worker worker, const std::string& name, const ArchiveRef& archive, ModelHosts::LoadDone done);
  // The live workers a model loaded for `device` runs in.
  std::vector<ModelHosts::Worker> HostsFor(const std::string& device) const;
  void FinishUnload(const std::string& key);
  std::string Loaded() const;  // "a, b:1" or "(none)", for errors

  boost::asio::io_context& io_;
  const SupervisorConfig& config_;
  ModelHosts* hosts_;
  JobQueue* jobs_;
  std::function<void(const std::string&, const std::string&)> on_failed_;
  std::map<std::string, Entry> models_;
  std::vector<std::shared_ptr<UnloadOp>> unloads_;
};

}  // namespace shoal
