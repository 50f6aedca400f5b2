// Descriptor: where a tensor's bytes live in an arena, and how to read them.
//
// {"arena": id, "block": offset of the allocation, "offset": first element's byte offset,
//  "dtype": "float32"|..., "shape": [...], "strides": [...] (in elements)
//  [, "gpu": PCI bus id: an empty output tensor that was on that GPU (it has no arena to
//  say so; the clients make it there)]}
// Parse() checks every field; Extent() and CheckBounds() make sure the bytes lie inside
// the arena before anybody touches them. Pure functions. Thread-compatible.
#pragma once

#include <cstdint>
#include <msgpack.hpp>
#include <string>
#include <vector>

#include "protocol/dtypes.h"
#include "protocol/messages.h"
#include "shoal/status.h"

namespace shoal {

constexpr size_t kMaxDims = 16;

struct Descriptor {
  uint64_t arena = 0;
  uint64_t block = 0;
  uint64_t offset = 0;
  std::string dtype;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
  std::string gpu;  // an empty tensor's GPU (bus id); empty: host, or where its arena is

  static Result<Descriptor> Parse(const msgpack::object& o);
  void Pack(Writer* w) const;
  // Bytes spanned from `offset` to the last element (0 for an empty tensor).
  // Fails on overflow, negative sizes or strides, unknown dtypes.
  Result<uint64_t> Extent() const;
  // Fails with BadRequest unless the whole extent lies within an arena of `arena_size` bytes.
  Status CheckBounds(uint64_t arena_size) const;
  // Bytes the tensor has as a dense tensor (elements x element size); more than Extent()
  // when strides overlap (a stride of 0 broadcasts one element). BadRequest on overflow.
  Result<uint64_t> LogicalBytes() const;
};

// Strides, in elements, of a contiguous tensor of `shape` (a 0 size counts as 1).
std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape);

}  // namespace shoal
