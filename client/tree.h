// Output trees (docs/protocol.md) to c10::IValue. Pure: no I/O. Thread-compatible.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <msgpack.hpp>

#include "protocol/descriptor.h"
#include "shoal/status.h"

namespace shoal {

// dtype name <-> torch scalar type; nullopt / empty for types shoal does not carry.
std::optional<at::ScalarType> ScalarTypeOf(std::string_view dtype);
std::string DTypeName(at::ScalarType t);

using TensorMaker = std::function<Result<torch::Tensor>(const Descriptor&)>;
Result<c10::IValue> DecodeTree(const msgpack::object& node, const TensorMaker& make, int depth = 0);

}  // namespace shoal
