// The part of an archive's manifest that shoald acts on itself, read without running
// anything in the archive: whether the model accepts broadcast inputs, how its jobs may be
// batched, which pickle it serves, which of its methods clients may call, and the tensor
// specs it declares.
//
// The manifest is JSON: _shoal/manifest.json in a torch.package archive (shoal.export
// writes it; shoal/manifest.json in exports before 2026-12-07), the extra file
// extra/shoal/manifest.json in a TorchScript archive
// (torch.jit.save(m, path, _extra_files=shoal.torchscript_manifest(...))). Its other keys
// (name, version, example) are the worker's business
// (python/shoal/archive.py). The archive reader (archive_reader.h) calls this, so a
// manifest shoald cannot read is a reason to refuse the archive, and this reader is
// fuzzed with it. A strict JSON reader: RFC 8259 values, at most 32 levels deep.
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// Dynamic batching of one model (docs/architecture.md, "Dynamic batching"): shoald groups
// up to max_batch queued jobs whose inputs agree on all but the first dimension into one
// run. From the manifest's "batching" object, each key overridable by the load request.
struct BatchPolicy {
  uint32_t max_batch = 0;      // jobs per run; 0 or 1: off
  uint64_t max_delay_us = 0;   // how long the oldest job may wait for the batch to fill
  std::vector<uint32_t> preferred_batch_sizes;  // ascending; a batch of one of these goes at once
  bool on() const { return max_batch > 1; }
};
constexpr uint32_t kMaxBatch = 64;                  // a batch's members
constexpr uint64_t kMaxBatchDelayUs = 10'000'000;   // 10 s
// BadRequest (starting with `who`, e.g. "model 'm'") unless `p` is one shoald can follow: max_batch at
// most kMaxBatch, max_delay_us at most kMaxBatchDelayUs, preferred sizes ascending between 2
// and max_batch (at most 8 of them), and neither of the latter without max_batch > 1.
Status CheckBatchPolicy(const BatchPolicy& p, const std::string& who);

// One tensor the model takes or returns, as shoal.export wrote it from the example inputs
// ("inputs"/"outputs": [{"name"?, "dtype", "shape": [N or null, ...]}]): a dtype of shoal's
// table (protocol/dtypes.h), -1 for a dimension of any size (null). Shown to clients
// (`models`, the KServe v2 metadata); the worker checks inputs against them.
struct TensorSpec {
  std::string name;  // may be empty (a tuple's output)
  std::string dtype;
  std::vector<int64_t> shape;
};
constexpr size_t kMaxSpecs = 64;

struct ManifestPolicy {
  // "broadcast_inputs": true lets inputs whose strides overlap (a stride of 0 stands for
  // many elements) reach this model; without it shoald refuses them (BAD_REQUEST).
  bool broadcast_inputs = false;
  // "quantized_engine": the quantized engine the worker loads and runs the model with
  // ("qnnpack", "onednn", ...); empty: the worker's default. Read by the TorchScript runner
  // (the Python runner reads the manifest itself).
  std::string quantized_engine;
  // "batching": {"max_batch": N, "max_delay_us": N, "preferred_batch_sizes": [N, ...]}
  // (shoal.export(..., batching={...})); unchecked here beyond types: CheckBatchPolicy.
  BatchPolicy batching;
  // "entry": the served object's pickle, "package/resource" (CheckEntryName; empty: absent,
  // model/model.pkl). A load's entry overrides it.
  std::string entry;
  // "methods": ["make_prediction", ...], methods besides forward clients may call
  // (CheckMethodNames); a load's `methods` add to them.
  std::vector<std::string> methods;
  // "inputs" / "outputs": the tensor specs; empty when absent, or when they are not specs
  // shoald can read (the worker refuses those at load).
  std::vector<TensorSpec> inputs, outputs;
};

// BadRequest when `json` is not one JSON object, or when a key shoald reads has a value
// of the wrong type.
// `what` names it in errors ("_shoal/manifest.json does not parse: it ...").
Result<ManifestPolicy> ParseManifestPolicy(std::string_view json, std::string_view what = "the manifest");

}  // namespace shoal
