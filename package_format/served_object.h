// What a torch.package archive serves and how clients may call it: the entry pickle (the
// served object, MultiPy's load_pickle(package, resource) as "package/resource") and the
// methods besides forward that a load or the manifest allows clients to call by name.
//
// One set of rules for every place a name comes from: shoald checks a load's `entry` and
// `methods` (supervisor/client_front.cc), the manifest reader the manifest's
// (package_format/manifest.h), the archive reader that the entry is a pickle the archive
// holds (archive_reader.h), and Python reads the same rules through shoal._native
// (shoal.export, the CLI). Names are refused before anything runs, so that a worker never
// meets a path that leaves the archive or a method that is not the model's own API.
// Thread-safety: pure functions.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "shoal/status.h"

namespace shoal {

// torch::deploy's convention: without a load's or a manifest's entry, the served object is
// the pickle model/model.pkl.
inline constexpr std::string_view kDefaultEntry = "model/model.pkl";
constexpr size_t kMaxEntryBytes = 256;
constexpr size_t kMaxMethods = 32;
constexpr size_t kMaxMethodNameBytes = 128;

// Whether `name` is an identifier ([A-Za-z_][A-Za-z0-9_]*).
bool IsIdentifier(std::string_view name);

// OK when `entry` can name an entry pickle: "package/resource", relative, at most
// kMaxEntryBytes, no NUL or other control character, no empty, "." or ".." component, every
// folder a Python module name (torch.package's package, dotted: "a/b/x.pkl" is package
// "a.b", resource "x.pkl"). Else a BadRequest saying what is wrong (without a prefix).
Status CheckEntryName(std::string_view entry);

// OK when `name` may be allowed as a method: an identifier of at most kMaxMethodNameBytes
// that is neither private nor special ("_x", "__call__"); "forward" is always allowed.
Status CheckMethodName(std::string_view name);
// CheckMethodName for each, at most kMaxMethods of them, none twice.
Status CheckMethodNames(const std::vector<std::string>& names);

// "forward, make_prediction": the methods a model allows, for messages.
std::string AllowedMethodsText(const std::vector<std::string>& allowed);

}  // namespace shoal
