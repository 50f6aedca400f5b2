// The structure of a model call that an infer may carry (docs/protocol.md, "Call
// structure"): `args`: [node] and `kwargs`: [[name, node]] in the tree grammar
// (protocol/tree_walk.h) with {"input": i} leaves, each a reference to the request's
// inputs[i]; and `method`: the served object's method to call. shoald checks a structure
// here before a job is made, so that a worker only meets structures it can build
// (python/shoal/_worker.py, worker/torchscript.cc), and forwards it re-encoded.
// Pure; thread-compatible.
#pragma once

#include <cstddef>
#include <string>

#include "package_format/served_object.h"  // IsIdentifier, CheckMethodName
#include "protocol/messages.h"
#include "shoal/status.h"

namespace shoal {

// Bounds of one call structure: nodes in args and kwargs together, bytes of one string
// (a value, a dict key, a keyword name, a named tuple's names), keyword arguments. The
// depth limit is the output tree's (kMaxOutputDepth, protocol/output_tree.h).
constexpr size_t kMaxCallNodes = 4096;
constexpr size_t kMaxCallStringBytes = 64 * 1024;
constexpr size_t kMaxCallKwargs = 256;
constexpr size_t kMaxKeywordBytes = kMaxMethodNameBytes;

// A validated call: `args` and `kwargs` as MessagePack (an array each; empty: absent, the
// call is model(*inputs)); `method` empty: forward.
struct CallTree {
  std::string args;
  std::string kwargs;
  std::string method;
  bool structured() const { return !args.empty() || !kwargs.empty(); }
};

// Reads and checks `args`, `kwargs` and `method` of an infer that has `inputs` inputs:
// depth, node count and string bounds, every index in range, every input referenced
// exactly once (when args or kwargs are present), keyword names that are identifiers and
// unique, known node kinds, a method name that may be allowed (CheckMethodName; whether
// the model allows it is checked by the client front). BAD_REQUEST saying what
// and where (`args[1]["boxes"]: input index 7 out of range (3 inputs)`).
Result<CallTree> ParseCallTree(const MapView& infer, size_t inputs);

// Appends an already encoded MessagePack value (one of CallTree's) to `w`.
void PackEncoded(Writer* w, std::string_view encoded);

}  // namespace shoal
