#include "protocol/descriptor.h"

#include <algorithm>
#include <string_view>

namespace shoal {

namespace {
constexpr int64_t kMaxDim = int64_t{1} << 48;

Result<std::vector<int64_t>> IntList(const MapView& m, const char* key) {
  auto arr = m.Array(key);
  if (!arr.ok()) return arr.status();
  const auto& a = (*arr)->via.array;
  if (a.size > kMaxDims) {
    return Status::BadRequest(std::string("'") + key + "' has " + std::to_string(a.size) +
                              " dimensions; at most " + std::to_string(kMaxDims) + " are allowed");
  }
  std::vector<int64_t> out;
  out.reserve(a.size);
  for (uint32_t i = 0; i < a.size; ++i) {
    if (a.ptr[i].type != msgpack::type::POSITIVE_INTEGER || a.ptr[i].via.u64 > uint64_t(kMaxDim)) {
      return Status::BadRequest(std::string("'") + key + "' must hold integers in [0, 2^48]");
    }
    out.push_back(static_cast<int64_t>(a.ptr[i].via.u64));
  }
  return out;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}
}  // namespace

Result<Descriptor> Descriptor::Parse(const msgpack::object& o) {
  auto mv = MapView::Of(o, "a tensor descriptor");
  if (!mv.ok()) return mv.status();
  Descriptor d;
  auto arena = mv->Uint("arena");
  if (!arena.ok()) return arena.status();
  auto block = mv->Uint("block");
  if (!block.ok()) return block.status();
  auto offset = mv->Uint("offset");
  if (!offset.ok()) return offset.status();
  auto dtype = mv->Str("dtype");
  if (!dtype.ok()) return dtype.status();
  if (DTypeSize(*dtype) == 0) return Status::BadRequest("unknown dtype '" + *dtype + "'");
  auto shape = IntList(*mv, "shape");
  if (!shape.ok()) return shape.status();
  auto strides = IntList(*mv, "strides");
  if (!strides.ok()) return strides.status();
  if (shape->size() != strides->size()) {
    return Status::BadRequest("shape and strides differ in length (" + std::to_string(shape->size()) +
                              " vs " + std::to_string(strides->size()) + ")");
  }
  d.arena = *arena;
  d.block = *block;
  d.offset = *offset;
  d.dtype = std::move(*dtype);
  d.shape = std::move(*shape);
  d.strides = std::move(*strides);
  auto gpu = mv->OptStr("gpu");
  if (!gpu.ok()) return gpu.status();
  d.gpu = gpu->value_or("");
  auto extent = d.Extent();
  if (!extent.ok()) return extent.status();
  return d;
}

void Descriptor::Pack(Writer* w) const {
  w->Map(gpu.empty() ? 6 : 7);
  w->Key("arena"); w->Val(arena);
  w->Key("block"); w->Val(block);
  w->Key("offset"); w->Val(offset);
  w->Key("dtype"); w->Str(dtype);
  w->Key("shape"); w->Val(shape);
  w->Key("strides"); w->Val(strides);
  if (!gpu.empty()) { w->Key("gpu"); w->Str(gpu); }
}

Result<uint64_t> Descriptor::Extent() const {
  size_t esize = DTypeSize(dtype);
  if (esize == 0) return Status::BadRequest("unknown dtype '" + dtype + "'");
  unsigned __int128 last = 0;  // index of the last element, in elements
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || strides[i] < 0) return Status::BadRequest("negative size or stride");
    if (shape[i] == 0) return uint64_t{0};
    last += static_cast<unsigned __int128>(shape[i] - 1) * static_cast<unsigned __int128>(strides[i]);
    // Checked as it grows: 16 terms of up to 2^126 could wrap the sum (values shoald reads
    // are bounded by Parse; _native.layout passes any int64).
    if (last > (static_cast<unsigned __int128>(1) << 62)) return Status::BadRequest("tensor extent overflows");
  }
  unsigned __int128 bytes = (last + 1) * esize;
  if (bytes > (static_cast<unsigned __int128>(1) << 62)) return Status::BadRequest("tensor extent overflows");
  return static_cast<uint64_t>(bytes);
}

Result<uint64_t> Descriptor::LogicalBytes() const {
  unsigned __int128 bytes = DTypeSize(dtype);
  if (bytes == 0) return Status::BadRequest("unknown dtype '" + dtype + "'");
  for (int64_t n : shape) {
    if (n < 0) return Status::BadRequest("negative size");
    bytes *= static_cast<unsigned __int128>(n);
    if (bytes > (static_cast<unsigned __int128>(1) << 62)) {
      return Status::BadRequest("tensor of shape " + ShapeString(shape) + " is too large (its size overflows)");
    }
  }
  return static_cast<uint64_t>(bytes);
}

std::vector<int64_t> ContiguousStrides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

Status Descriptor::CheckBounds(uint64_t arena_size) const {
  auto extent = Extent();
  if (!extent.ok()) return extent.status();
  if (*extent == 0) return Status::Ok();
  if (offset > arena_size || *extent > arena_size - offset) {
    return Status::BadRequest("tensor of " + std::to_string(*extent) + " bytes at offset " +
                              std::to_string(offset) + " lies outside arena " + std::to_string(arena) +
                              " (" + std::to_string(arena_size) + " bytes)");
  }
  if (block > offset) return Status::BadRequest("descriptor's block starts after its data");
  return Status::Ok();
}

}  // namespace shoal
