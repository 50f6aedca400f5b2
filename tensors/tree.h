// libtorch values <-> the wire: shoal dtype names <-> at::ScalarType (from the one dtype
// table, protocol/dtypes.h) and output trees and call structures (docs/protocol.md; one
// reader of the grammar, protocol/tree_walk.h) -> c10::IValue. Part of
// the shoal_tensors library, which the C++ client and shoal-worker both link.
// Pure: no I/O. Thread-compatible.
#pragma once

#include <ATen/core/ivalue.h>
#include <torch/types.h>  // torch::Tensor and the factories; not torch/torch.h (nn, optim, data: much slower to compile)

#include <functional>
#include <msgpack.hpp>

#include "protocol/descriptor.h"
#include "protocol/output_tree.h"
#include "protocol/tree_walk.h"
#include "shoal/status.h"

namespace shoal {

// dtype name <-> torch scalar type; nullopt / empty for types shoal does not carry.
std::optional<at::ScalarType> ScalarTypeOf(std::string_view dtype);
std::string DTypeName(at::ScalarType t);

using TensorMaker = std::function<Result<torch::Tensor>(const Descriptor&)>;
// Rebuilds an output tree; `make` builds each tensor from its descriptor. Trees nested
// deeper than kMaxOutputDepth (protocol/output_tree.h) are refused.
Result<c10::IValue> DecodeTree(const msgpack::object& node, const TensorMaker& make);
// One node of a call structure (docs/protocol.md, "Call structure"; checked by shoald):
// {"input": i} is inputs[i]; `at` names the node in errors.
Result<c10::IValue> DecodeCallNode(const msgpack::object& node, const std::vector<c10::IValue>& inputs,
                                   const TreePath& at);

}  // namespace shoal
