// The part of an archive's manifest that shoald acts on itself, read without running
// anything in the archive: whether the model accepts broadcast inputs.
//
// The manifest is JSON: shoal/manifest.json in a torch.package archive (shoal.export
// writes it), the extra file extra/shoal/manifest.json in a TorchScript archive
// (torch.jit.save(m, path, _extra_files=shoal.torchscript_manifest(...))). Its other keys
// (name, version, entry, input specs, example) are the worker's business
// (python/shoal/archive.py). The archive reader (archive_reader.h) calls this, so a
// manifest shoald cannot read is a reason to refuse the archive, and this reader is
// fuzzed with it. A strict JSON reader: RFC 8259 values, at most 32 levels deep.
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <string_view>

#include "shoal/status.h"

namespace shoal {

struct ManifestPolicy {
  // "broadcast_inputs": true lets inputs whose strides overlap (a stride of 0 stands for
  // many elements) reach this model; without it shoald refuses them (BAD_REQUEST).
  bool broadcast_inputs = false;
  // "quantized_engine": the quantized engine the worker loads and runs the model with
  // ("qnnpack", "onednn", ...); empty: the worker's default. Read by the TorchScript runner
  // (the Python runner reads the manifest itself).
  std::string quantized_engine;
};

// BadRequest when `json` is not one JSON object, or when a key shoald reads has a value
// of the wrong type.
Result<ManifestPolicy> ParseManifestPolicy(std::string_view json);

}  // namespace shoal
