// What a model may be called (docs/protocol.md, "Model names"): NAME or NAME:VERSION,
// 1-128 characters of UTF-8, no spaces or '/'. One rule for every way a model gets its name: a
// client's `load` and the files of the model repository (supervisor/model_repository.h);
// and one for which of its versions a plain NAME means.
// Thread-safety: pure; any thread.
#pragma once

#include <string>

#include "shoal/status.h"

namespace shoal {

// OK, or a BAD_REQUEST that says what a name must look like.
Status CheckModelName(const std::string& name);

// Whether version `a` is newer than `b` (of NAME:VERSION): numbers compare as numbers
// (10 > 2), text as text, and every text version is newer than every number; a strict
// order, so which version is newest never depends on the order versions are looked at. The
// one rule by which a plain NAME runs its newest version (ModelRegistry::Resolve) and the
// KServe front describes and lists versions.
bool NewerVersion(const std::string& a, const std::string& b);

}  // namespace shoal
